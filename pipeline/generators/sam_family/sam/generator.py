"""`sam`: Segment Anything's automatic masks (vit_h / vit_l / vit_b), turned into one label map.

Masks come from the batched engine (`engine.amg.AmgEngine`) over `SamSegmenter`:
`mode=exact` (default) gives stock `SamAutomaticMaskGenerator`'s masks; `mode=fast` runs
the encoder in bf16 with fused attention and (on a GPU) decodes all prompts of a crop at once
(`compile=true` adds `torch.compile`); its agreement with exact mode is measured by
`benchmarks/bench_masks.py`. Its raw masks are the engine's, run-length encoded on the device;
the `pipeline.label_maps` rule makes them a partition. Weights: `checkpoint=PATH`, or the
official file for `model` fetched into `cache_dir` and checked against its sha256; `model`
(vit_b, vit_l, vit_h) may be left out and is then read from the checkpoint. Tests and
benchmarks inject a model (`SamGenerator(config, rule, model=sam)`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from pipeline.generators.base import register
from pipeline.generators.sam_family.amg_settings import AmgSettings
from pipeline.generators.sam_family.checkpoint_generator import CheckpointSettings
from pipeline.generators.sam_family.checkpoints import CheckpointContents, load_checked
from pipeline.generators.sam_family.engine.generator import EngineGenerator
from pipeline.generators.sam_family.sam.segmenter import SamSegmenter
from pipeline.generators.sam_family.weights import SAM_WEIGHTS

SAM_MODELS = ("vit_h", "vit_l", "vit_b")
MODES = ("exact", "fast")


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


def load_sam(checkpoint: Path, contents: CheckpointContents, device: torch.device) -> Sam:
    """Build the network the checkpoint holds with segment-anything's builder and load its weights safely (weights_only)."""
    sam = load_checked(sam_model_registry[contents.model](), checkpoint, contents)
    return sam.to(device).eval()


@register
class SamGenerator(EngineGenerator):
    """Coverage is the share of pixels some SAM mask covered; mean_iou averages SAM's predicted IoU."""

    name = "sam"
    Config = SamConfig
    weights_family = SAM_WEIGHTS

    @property
    def fast(self) -> bool:
        return self.config.mode == "fast"

    def build_segmenter(self) -> SamSegmenter:
        """An injected model is copied (fast mode patches its attention); a loaded one is patched in place."""
        if self.injected is not None:
            return SamSegmenter(self.injected, fast=self.fast, compile_encoder=self.config.compile, copy_model=True)
        sam = load_sam(self.checkpoint_path(), self.contents, self.device)
        return SamSegmenter(sam, fast=self.fast, compile_encoder=self.config.compile, copy_model=False)
