"""Options of the form `FILE` or `FILE:DOTTED.KEY`: a value read from a YAML or JSON file.

They let a DVC stage hand a command exactly its own part of params.yaml
(`--settings params.yaml:masks.settings.sam`, `--names-from params.yaml:masks.generators`)
without copying it into dvc.yaml, where lists cannot be interpolated into a command.
`--names-from` picks, out of a folder a study writes into, the entries of the study as it
is now configured.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_file_value(reference: str, option: str) -> Any:
    """The value at DOTTED.KEY of FILE (the whole document without a key); errors name `option`, the file and key."""
    import yaml  # only when a command reads a file: `segpic --help` stays quick

    path_text, _, key = reference.rpartition(":") if ":" in reference else (reference, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"{option}: {path}: no such file")
    try:
        found = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"{option}: {path} is not valid YAML or JSON{where} ({getattr(error, 'problem', error)})") from error
    for part in key.split(".") if key else []:
        if not isinstance(found, dict) or part not in found:
            raise ValueError(f"{option}: {path} has no key {key!r}")
        found = found[part]
    return found


def file_settings(reference: str) -> tuple[tuple[str, Any], ...]:
    """`--settings FILE[:DOTTED.KEY]` -> the settings mapping found there, as (name, value) pairs.

    Lets a DVC stage hand a generator exactly its own block of params.yaml
    (`params.yaml:masks.settings.sam`); values keep their YAML types.
    """
    found = read_file_value(reference, "--settings")
    if found is None:
        return ()
    if not isinstance(found, dict):
        raise ValueError(f"--settings: {reference} is not a mapping of KEY: VALUE settings")
    return tuple((str(name).replace("-", "_"), value) for name, value in found.items())


def read_names(reference: str, option: str) -> tuple[str, ...]:
    """A list of names at `reference` (the study's mask sources, or its λ values as DVC writes them in paths)."""
    found = read_file_value(reference, option)
    if not isinstance(found, list) or not found or not all(isinstance(name, (str, int, float)) for name in found):
        raise ValueError(f"{option}: {reference} is not a list of names")
    return tuple(str(name) for name in found)


def named_folders(root: Path, names: Sequence[str], listed_in: str, what: str) -> tuple[list[Path], list[str]]:
    """`root/NAME` for each listed name, and a line for each other folder of `root` left out.

    A study's output folders keep what stages of earlier configurations wrote (DVC does not
    delete the outputs of a stage that is gone), so the study names what belongs to it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder of {what}")
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"{root}: no {what} for {', '.join(missing)} (listed in {listed_in})")
    left_out = [
        f"left out {child}: {child.name} is not in {listed_in}"
        for child in sorted(root.iterdir())
        if child.is_dir() and child.name not in names
    ]
    return [root / name for name in names], left_out
