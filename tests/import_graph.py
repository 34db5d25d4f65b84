"""The project's own imports, read from its source: what each module of `pipeline` and `model` imports.

Static (the AST of each file), so imports made inside functions, as the command line and the
generator registry make them to start quickly, count like any other. Shared by the check of
each DVC stage's code dependencies (`stage_code`) and the check of the layering
(`test_layering`).
"""

import ast
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model")


def module_file(name: str) -> Path | None:
    """The file of the project module `name` (a package's `__init__.py`), None when there is none."""
    base = PROJECT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_of(path: Path) -> str:
    """The package a file's relative imports start from."""
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1])


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(nodes: list[ast.stmt], package: str) -> Iterator[str]:
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


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name."""
    return {module_name(path): path for package in PACKAGES for path in sorted((PROJECT / package).rglob("*.py"))}


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules the file imports by name: `from P import X` is the module P.X where there is one, else P.

    The parent packages that Python initialises on the way are not counted: every import
    would otherwise tie a module to its package's `__init__.py`.
    """
    package, found = package_of(path), set()
    for node in ast.walk(_parsed(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = next(imported_names([node], package))
            found |= {f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names}
    return {name for name in found if name in modules and modules[name] != path}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`imported_modules`), for every module of the project."""
    modules = project_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def external_imports(path: Path) -> set[str]:
    """Top-level names of what the file imports from outside the project (torch, typer, dvclive, ...)."""
    names = imported_names(_parsed(path).body, package_of(path))
    return {name.split(".")[0] for name in names if name and name.split(".")[0] not in PACKAGES}
