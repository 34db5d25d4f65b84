"""`sam`: Segment Anything's automatic masks (vit_h / vit_l / vit_b), turned into one label map.

Masks come from the batched engine (`amg_engine.AmgEngine`) over `SamSegmenter`:
`mode=exact` (default) gives stock `SamAutomaticMaskGenerator`'s masks; `mode=fast` runs
the encoder in bf16 with fused attention and (on a GPU) decodes all prompts of a crop at once
(`compile=true` adds `torch.compile`); its agreement with exact mode is measured by
`benchmarks/bench_masks.py`. Its raw masks are the engine's, run-length encoded on the device;
the `pipeline.label_maps` rule makes them a partition. Weights: `checkpoint=PATH`, or the
official file for `model` fetched into `cache_dir` and checked against its sha256; `model`
(vit_b, vit_l, vit_h) may be left out and is then read from the checkpoint. Tests and
benchmarks inject a model (`SamGenerator(config, rule, model=sam)`).
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from pipeline.generators.amg_engine import AmgEngine, AmgSettings
from pipeline.generators.base import register
from pipeline.generators.sam_checkpoints import CheckpointContents, load_checked
from pipeline.generators.sam_family import MODES, CheckpointGenerator, CheckpointSettings
from pipeline.generators.sam_segmenter import SamSegmenter
from pipeline.generators.sam_weights import SAM_WEIGHTS
from pipeline.label_maps import LabelMapRule
from pipeline.raw_mask_format import RawMasks

SAM_MODELS = ("vit_h", "vit_l", "vit_b")


@dataclass(frozen=True)
class SamConfig(AmgSettings, CheckpointSettings):
    """AMG settings, which network, exact or fast arithmetic, and where it runs."""

    model: str = ""  # vit_b, vit_l or vit_h; empty: read from the checkpoint
    mode: str = "exact"
    compile: bool = False

    def __post_init__(self) -> None:
        AmgSettings.__post_init__(self)
        CheckpointSettings.__post_init__(self)
        if self.model and self.model not in SAM_MODELS:
            raise ValueError(f"unknown SAM model {self.model!r}; choose one of {', '.join(SAM_MODELS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.compile and self.mode != "fast":
            raise ValueError("compile=true needs mode=fast (compiled kernels change the arithmetic)")

    @property
    def amg_settings(self) -> AmgSettings:
        return AmgSettings(**{field.name: getattr(self, field.name) for field in dataclasses.fields(AmgSettings)})


def load_sam(checkpoint: Path, contents: CheckpointContents, device: torch.device) -> Sam:
    """Build the network the checkpoint holds with segment-anything's builder and load its weights safely (weights_only)."""
    sam = load_checked(sam_model_registry[contents.model](), checkpoint, contents)
    return sam.to(device).eval()


@register
class SamGenerator(CheckpointGenerator):
    """Coverage is the share of pixels some SAM mask covered; mean_iou averages SAM's predicted IoU."""

    name = "sam"
    Config = SamConfig
    weights_family = SAM_WEIGHTS

    def __init__(self, config: SamConfig, rule: LabelMapRule = LabelMapRule(), model: Sam | None = None) -> None:
        super().__init__(config, rule, model)
        self._engine: AmgEngine | None = None

    @property
    def engine(self) -> AmgEngine:
        """Built on first use, so a driver that only needs `settings_hash` never holds the network."""
        if self._engine is None:
            config, fast = self.config, self.config.mode == "fast"
            if self.injected is not None:
                segmenter = SamSegmenter(self.injected, fast=fast, compile_encoder=config.compile, copy_model=True)
            else:
                sam = load_sam(self.checkpoint_path(), self.contents, self.device)
                segmenter = SamSegmenter(sam, fast=fast, compile_encoder=config.compile, copy_model=False)
            all_prompts = fast and self.device.type == "cuda"  # on a CPU one call's memory would grow with the grid
            self._engine = AmgEngine(segmenter, config.amg_settings, image_batch=self.batch_size, all_prompts=all_prompts)
        return self._engine

    def start(self) -> None:
        self.engine  # builds the network now: an unreadable or mismatched checkpoint fails here, once

    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        return self.regions_batch([image], [image_id])[0]

    def regions_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[RawMasks]:
        return self.engine.raw_masks(images)
