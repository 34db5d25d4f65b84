"""What every SAM-family generator (`sam`, `sam2`, `sam3`) shares: weights, device, batch size and their settings.

Each loads its network from a checkpoint on first use (a driver that only needs
`settings_hash` never holds it) or takes an injected model (tests, benchmarks). What the
checkpoint holds is read from its tensors when the generator is built (`checkpoints`):
a file of another family or size stops the run before anything is written, and a `model`
left out is taken from the file and recorded in the settings. Settings name the weights by
sha256; where the file lives, the device and the batch size are left out because they do
not change the masks.
"""

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from pipeline.generators.base import MaskGenerator
from pipeline.generators.sam_family.checkpoints import CheckpointContents, checked_model, identify_checkpoint
from pipeline.generators.sam_family.weights import WeightsFamily, resolve_checkpoint, weights_sha256
from pipeline.label_maps import LabelMapRule

GPU_BATCH = 4  # images per encoder batch on a GPU; vit_h at 4 stays far below 24 GB


@dataclass(frozen=True)
class CheckpointSettings:
    """Where the weights come from and where the network runs (none of it changes the masks)."""

    checkpoint: str = ""
    cache_dir: str = ""
    sha256: str = ""
    device: str = "auto"
    batch_size: int = 0  # images per call; 0: GPU_BATCH on a GPU, 1 on the CPU

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0: automatic), got {self.batch_size}")


LOCAL_FIELDS = ("checkpoint", "cache_dir", "sha256", "device", "batch_size")


def pick_device(device: str) -> torch.device:
    """`auto` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class CheckpointGenerator(MaskGenerator):
    """A generator whose network comes from `config.checkpoint` (or the official file for `config.model`)."""

    weights_family: ClassVar[WeightsFamily]
    keeps_raw_masks = True  # the network pass is the expensive step: keep what it found

    def __init__(self, config: Any, rule: LabelMapRule = LabelMapRule(), model: torch.nn.Module | None = None) -> None:
        """`model`: a network to use instead of the checkpoint's (tests and benchmarks inject one)."""
        super().__init__(config, rule)
        self.injected = model
        self.contents: CheckpointContents | None = None
        if model is not None:
            self.checkpoint, self._weights = None, "injected"
            self.device = next(model.parameters()).device
        else:
            self.checkpoint = resolve_checkpoint(self.weights_family, config.model, config.checkpoint, config.cache_dir, config.sha256)
            self.contents = identify_checkpoint(self.checkpoint)
            size = checked_model(self.checkpoint, self.contents, self.name, self.weights_family, config.model)
            if any(field.name == "model" for field in fields(config)):  # SAM 3 has a single model and no such setting
                self.config = replace(config, model=size)
            self._weights = {"sha256": weights_sha256(self.checkpoint)}
            self.device = pick_device(config.device)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size or (GPU_BATCH if self.device.type == "cuda" else 1)

    def checkpoint_path(self) -> Path:
        assert self.checkpoint is not None, "an injected model has no checkpoint"
        return self.checkpoint

    def identity(self) -> dict[str, Any]:
        """Which weights, by content: two files with the same name and size but other weights differ here."""
        return {"weights": self._weights}

    def network_settings(self) -> dict[str, Any]:
        settings = super().network_settings()
        for where in LOCAL_FIELDS:
            settings["config"].pop(where)
        return settings
