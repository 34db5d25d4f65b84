"""What a resumed run starts from: its checkpoint, checked, and the settings it recorded.

A resume keeps the run's own settings for every option the user does not give, so an
accepted change (`--allow-change lr` with a new `--lr`) stays in effect on later resumes
without being repeated, and only what the user types can differ from the run.
"""

from pathlib import Path
from typing import Any

from model.checkpoints import check_format_version, is_our_checkpoint
from model.training.config import CHECKPOINT_NAME
from model.training.state import check_state_format
from pipeline.torch_files import read_torch_file


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of ours holding a training state of a version this code can resume."""
    checkpoint = read_torch_file(path)
    if not is_our_checkpoint(checkpoint):
        raise ValueError(f"{path}: not a resumable training checkpoint (not written by segpic train)")
    check_format_version(checkpoint, str(path))
    check_state_format(checkpoint.get("training"), str(path))
    return checkpoint


def recorded_settings(out: Path) -> dict[str, Any]:
    """The settings the run in `out` recorded (experiment and schedule); empty when `out` holds no checkpoint."""
    path = Path(out) / CHECKPOINT_NAME
    if not path.is_file():
        return {}
    state = read_training_checkpoint(path)["training"]
    return {**state.get("schedule", {}), **state["experiment"]}
