"""`sam`: Segment Anything's automatic masks (vit_h / vit_l / vit_b), turned into one label map.

Masks come from `FastAutomaticMaskGenerator` (stock AMG's masks, faster) and become a
partition through `pipeline.label_maps.masks_to_label_map`. Weights: `checkpoint=PATH`,
or the official file for `model` fetched into `cache_dir` and checked against its sha256.
Tests and benchmarks inject a model (`SamGenerator(config, rule, model=sam)`).
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from pipeline.generators.base import MaskGenerator, register
from pipeline.generators.sam_amg import AmgSettings, FastAutomaticMaskGenerator
from pipeline.generators.sam_weights import resolve_checkpoint
from pipeline.label_maps import LabelMapRule, MaskResult, masks_to_label_map

SAM_MODELS = ("vit_h", "vit_l", "vit_b")


@dataclass(frozen=True)
class SamConfig(AmgSettings):
    """AMG settings plus which network to run and where: `device` "auto" picks CUDA when present."""

    model: str = "vit_h"
    checkpoint: str = ""
    cache_dir: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in SAM_MODELS:
            raise ValueError(f"unknown SAM model {self.model!r}; choose one of {', '.join(SAM_MODELS)}")

    @property
    def amg_settings(self) -> AmgSettings:
        return AmgSettings(**{field.name: getattr(self, field.name) for field in dataclasses.fields(AmgSettings)})


def pick_device(device: str) -> torch.device:
    """`auto` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_sam(model_type: str, checkpoint: Path, device: torch.device) -> Sam:
    """Build the network with segment-anything's builder and load weights safely (weights_only)."""
    sam = sam_model_registry[model_type]()
    sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.to(device).eval()


@register
class SamGenerator(MaskGenerator):
    """Coverage is the share of pixels some SAM mask covered; mean_iou averages SAM's predicted IoU."""

    name = "sam"
    Config = SamConfig

    def __init__(self, config: SamConfig, rule: LabelMapRule = LabelMapRule(), model: Sam | None = None) -> None:
        super().__init__(config, rule)
        self._checkpoint = None if model is not None else resolve_checkpoint(config.model, config.checkpoint, config.cache_dir)
        self._amg = None if model is None else FastAutomaticMaskGenerator(SamPredictor(model.eval()), config.amg_settings)

    @property
    def amg(self) -> FastAutomaticMaskGenerator:
        """Loaded on first use, so a driver that only needs `settings_hash` never holds the network."""
        if self._amg is None:
            sam = load_sam(self.config.model, self._checkpoint, pick_device(self.config.device))
            self._amg = FastAutomaticMaskGenerator(SamPredictor(sam), self.config.amg_settings)
        return self._amg

    def start(self) -> None:
        self.amg  # loads the network now: an unreadable or mismatched checkpoint fails here, once

    def identity(self) -> dict[str, Any]:
        """Which weights: the checkpoint's name and size (device and cache folder do not change masks)."""
        if self._checkpoint is None:
            return {"weights": "injected"}
        return {"weights": {"file": self._checkpoint.name, "bytes": self._checkpoint.stat().st_size}}

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        for where in ("checkpoint", "cache_dir", "device"):
            settings["config"].pop(where)
        return settings

    def generate(self, image: np.ndarray, image_id: str) -> MaskResult:
        masks = self.amg.generate(image)
        return masks_to_label_map(masks, image.shape[0], image.shape[1], self.rule)
