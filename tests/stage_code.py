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

from import_graph import PACKAGES, PROJECT, imported_names, module_file, module_name, package_of

CLI_PACKAGE = "pipeline.cli"


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
    todo = list(imported_names(own, package_of(module_path)))
    while todo:
        imported = todo.pop()
        for name in _with_parents(imported):
            path = module_file(name) if name.split(".")[0] in PACKAGES else None
            if path is None:
                continue
            if path not in seen:
                seen.add(path)
                todo.extend(imported_names(ast.parse(path.read_text(encoding="utf-8")).body, package_of(path)))
            # A package reached first as the parent of `package.name` is still imported by name later.
            if name == imported and path.name == "__init__.py" and "." in name and name not in expanded:
                expanded.add(name)
                todo.extend(module_name(module) for module in path.parent.rglob("*.py"))
    return {path.relative_to(PROJECT) for path in seen}
