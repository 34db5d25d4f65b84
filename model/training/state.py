"""Everything a run needs to resume exactly: counters, optimisers, scheduler, RNG states.

Checkpoints are loaded with `torch.load(weights_only=True)`, which admits tensors and
plain Python containers only, so numpy's and Python's RNG states are converted to
tensors here and back on restore.
"""

import random
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from model.training.config import CHANGEABLE_ON_RESUME

TRAINING_STATE_FORMAT = "segpic-training-state"
TRAINING_STATE_VERSION = 3
"""2 records learning rates, plateau settings, data folders and preset in `experiment`, and `changes`;
3 records the `schedule` (steps and intervals), which a resume keeps unless told otherwise."""
SUPPORTED_STATE_VERSIONS = (1, 2, 3)


@dataclass
class Progress:
    """Where the run is: optimiser steps taken and the data position of the next batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    nonfinite_steps: int = 0

    def advance(self, batches_per_epoch: int) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python as checkpoint-safe values."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    np.random.set_state(
        (saved["name"], saved["keys"].numpy().astype(np.uint32), saved["position"], saved["has_gauss"], saved["cached_gaussian"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))


def training_state(
    progress: Progress,
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    experiment: dict[str, Any],
    changes: list[dict[str, Any]],
    schedule: dict[str, int],
) -> dict[str, Any]:
    """The checkpoint's `training` entry (model weights travel in the codec part)."""
    return {
        "format": TRAINING_STATE_FORMAT,
        "format_version": TRAINING_STATE_VERSION,
        "progress": asdict(progress),
        "optimizer": optimizer.state_dict(),
        "aux_optimizer": aux_optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "experiment": experiment,
        "changes": changes,
        "schedule": schedule,
    }


def check_state_format(state: object, source: str) -> dict[str, Any]:
    """The training state of a checkpoint, refused unless it is one this version can resume."""
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise ValueError(f"{source}: not a resumable training checkpoint (no training state)")
    version = state.get("format_version")
    if version not in SUPPORTED_STATE_VERSIONS:
        raise ValueError(
            f"{source}: training state format version {version!r} cannot be resumed by this version "
            f"(supported: {', '.join(map(str, SUPPORTED_STATE_VERSIONS))})"
        )
    return state


def experiment_changes(
    saved: dict[str, Any], current: dict[str, Any], allowed: Collection[str], source: str
) -> dict[str, tuple[Any, Any]]:
    """Settings that differ from the checkpoint's as {name: (old, new)}; refuses any not in `allowed`.

    Settings an older checkpoint did not record are not compared.
    """
    changed = {key: (saved[key], value) for key, value in current.items() if key in saved and saved[key] != value}
    refused = {key: values for key, values in changed.items() if key not in allowed}
    if refused:
        details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        fixed = [key for key in refused if key not in CHANGEABLE_ON_RESUME]
        remedy = (
            f"{', '.join(fixed)} cannot change within a run: resume with the same value or train into a new --out"
            if fixed
            else "to change it deliberately pass " + " ".join(f"--allow-change {key}" for key in refused)
        )
        raise ValueError(f"{source}: cannot resume, the run's settings changed ({details}); {remedy}")
    return changed


def restore_training_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
) -> Progress:
    """Load optimisers, scheduler and RNGs from a checked state (see `check_state_format`)."""
    optimizer.load_state_dict(state["optimizer"])
    aux_optimizer.load_state_dict(state["aux_optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return Progress(**state["progress"])
