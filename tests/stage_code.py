"""The project files a `segpic` command can run: its function, and every project module it imports.

Used to check that each DVC stage declares exactly the code it runs as dependencies. The
walk is static (the AST of each file), so it also sees imports made inside functions, as
the command line makes them to start quickly. A command's own module contributes its
top-level imports and those of the command function only; every module reached from
there contributes all of its imports, and each package's `__init__.py` on the way. A
package imported by name (`from pipeline.generators import build_generator`) brings all
of its modules, since a registry may load them by name. The CLI package's `__init__.py` is
left out: it only assembles the commands.
"""

import ast
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model")
CLI_PACKAGE = "pipeline.cli"


def _module_file(name: str) -> Path | None:
    base = PROJECT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1])


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(nodes: list[ast.stmt], package: str) -> Iterator[str]:
    """Absolute names of what `nodes` import: modules, and `from M import X` as both M and M.X."""
    for statement in nodes:
        for node in ast.walk(statement):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(anchor + ([module] if module else []))
                yield module
                yield from (f"{module}.{alias.name}" for alias in node.names)


def _with_parents(name: str) -> Iterator[str]:
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if prefix != CLI_PACKAGE:
            yield prefix


def command_files(command: Callable) -> set[Path]:
    """Project files (relative to the project) that running `command` can execute."""
    module_path = Path(inspect.getsourcefile(command))
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    own = [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    own += [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == command.__name__]
    seen, expanded = {module_path}, set()
    todo = list(_imported_names(own, _package_of(module_path)))
    while todo:
        imported = todo.pop()
        for name in _with_parents(imported):
            path = _module_file(name) if name.split(".")[0] in PACKAGES else None
            if path is None:
                continue
            if path not in seen:
                seen.add(path)
                todo.extend(_imported_names(ast.parse(path.read_text(encoding="utf-8")).body, _package_of(path)))
            # A package reached first as the parent of `package.name` is still imported by name later.
            if name == imported and path.name == "__init__.py" and "." in name and name not in expanded:
                expanded.add(name)
                todo.extend(_module_name(module) for module in path.parent.rglob("*.py"))
    return {path.relative_to(PROJECT) for path in seen}
