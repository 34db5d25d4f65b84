"""`--settings FILE[:DOTTED.KEY]`: a mapping of settings read from a YAML or JSON file (masks, repaint, split-settings)."""

from pathlib import Path
from typing import Any


def file_settings(reference: str) -> tuple[tuple[str, Any], ...]:
    """`FILE` or `FILE:DOTTED.KEY` (YAML or JSON) -> the settings mapping found there, as pairs.

    Lets a DVC stage hand a generator exactly its own block of params.yaml
    (`params.yaml:masks.settings.sam`); values keep their YAML types.
    """
    import yaml  # only when a command reads a file: `segpic --help` stays quick

    path_text, _, key = reference.rpartition(":") if ":" in reference else (reference, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"--settings: {path}: no such file")
    try:
        found = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"--settings: {path} is not valid YAML or JSON{where} ({getattr(error, 'problem', error)})") from error
    for part in key.split(".") if key else []:
        if not isinstance(found, dict) or part not in found:
            raise ValueError(f"--settings: {path} has no key {key!r}")
        found = found[part]
    if found is None:
        return ()
    if not isinstance(found, dict):
        raise ValueError(f"--settings: {reference} is not a mapping of KEY: VALUE settings")
    return tuple((str(name).replace("-", "_"), value) for name, value in found.items())
