"""The run directory: one run per folder, never silently mixed with or overwritten by another.

A folder holds a run when it has a checkpoint, a metrics summary or dvclive series. Training
into it then needs `--resume` (continue that run) or `--overwrite` (delete it first).
"""

import shutil
from pathlib import Path

from model.training.config import TrainConfig

PARTIAL_CHECKPOINT_GLOB = ".checkpoint.pt.*.incomplete"
"""Temporary files of a checkpoint write cut short by a kill (see `atomic_torch_save`)."""


def run_files(config: TrainConfig) -> list[Path]:
    """The files and folders of a run that exist now."""
    candidates = [config.checkpoint_path, config.metrics_path, config.metrics_dir]
    return [path for path in candidates if path.exists()]


def prepare_run_directory(config: TrainConfig) -> None:
    """Check that `config.out` may receive this run; with `--overwrite` clear the old one first.

    Called by the launcher or rank 0 only, before any rank writes.
    """
    out = config.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a run directory")
    for partial in out.glob(PARTIAL_CHECKPOINT_GLOB):
        partial.unlink(missing_ok=True)
    existing = run_files(config)
    if not existing or config.resume:
        return
    if not config.overwrite:
        named = ", ".join(path.name for path in existing)
        raise ValueError(
            f"--out {out} already holds a run ({named}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
