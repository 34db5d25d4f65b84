"""Everything a run needs to resume exactly: counters, optimisers, scheduler, RNG states.

Checkpoints are loaded with `torch.load(weights_only=True)`, which admits tensors and
plain Python containers only, so numpy's and Python's RNG states are converted to
tensors here and back on restore.
"""

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

TRAINING_STATE_FORMAT = "segpic-training-state"
TRAINING_STATE_VERSION = 1


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
    }


def restore_training_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    experiment: dict[str, Any],
    source: str,
) -> Progress:
    """Load optimisers, scheduler and RNGs; refuse a checkpoint of a different experiment."""
    if state.get("format") != TRAINING_STATE_FORMAT or state.get("format_version") != TRAINING_STATE_VERSION:
        raise ValueError(f"{source}: training state has format {state.get('format')!r} v{state.get('format_version')}")
    changed = {key: (state["experiment"].get(key), value) for key, value in experiment.items() if state["experiment"].get(key) != value}
    if changed:
        details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ValueError(f"{source}: cannot resume, the run's settings changed ({details})")
    optimizer.load_state_dict(state["optimizer"])
    aux_optimizer.load_state_dict(state["aux_optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return Progress(**state["progress"])
