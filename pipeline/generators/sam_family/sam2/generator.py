"""`sam2`: SAM 2.1 automatic masks (Hiera tiny / small / base+ / large) through the official `sam2` package.

The network is built from the package's own SAM 2.1 configs with `build_sam2` (no
post-processing overrides, as the official automatic-mask example does) and masks come
from its `SAM2AutomaticMaskGenerator`, one image at a time, with their predicted IoUs and
stability scores; they become a partition by the same `pipeline.label_maps` rule as `sam`.
It does not run on the batched engine: that AMG has steps the engine lacks (`use_m2m`,
`multimask_output=false`), and no adapter has been shown to give its masks mask for mask
(`pipeline.generators.sam_family`). One change to the package's AMG: its
predictor's low-resolution hole and sprinkle filling (enabled by `min_mask_region_area`)
needs the optional CUDA extension and silently does nothing without it, so it is turned
off and masks do not depend on how the package was built; `min_mask_region_area` still
applies the stock full-resolution clean-up. Weights: `checkpoint=PATH` (a `{"model":
state_dict}` file as Meta publishes), or the official file for `model`, downloaded and
checked against `sha256=HEX` (Meta publishes no sums for SAM 2.1); `model` may be left out
and is then read from the checkpoint.
"""

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

from pipeline.generators.base import register
from pipeline.generators.sam_family.amg_settings import AmgSettings
from pipeline.generators.sam_family.checkpoint_generator import CheckpointGenerator, CheckpointSettings
from pipeline.generators.sam_family.checkpoints import CheckpointContents, load_checked
from pipeline.generators.sam_family.weights import SAM21_WEIGHTS
from pipeline.label_maps import LabelMapRule
from pipeline.raw_mask_format import RawMasks, dense_raw_masks

SAM21_CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


@dataclass(frozen=True)
class Sam2Config(AmgSettings, CheckpointSettings):
    """SAM2AutomaticMaskGenerator's settings and defaults (SAM 2.1-L's), plus which network and where."""

    model: str = ""  # tiny, small, base_plus or large; empty: read from the checkpoint
    pred_iou_thresh: float = 0.8
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        AmgSettings.__post_init__(self)
        CheckpointSettings.__post_init__(self)
        if self.model and self.model not in SAM21_CONFIGS:
            raise ValueError(f"unknown SAM 2.1 model {self.model!r}; choose one of {', '.join(SAM21_CONFIGS)}")

    def amg_options(self) -> dict:
        names = [field.name for field in fields(AmgSettings)] + ["use_m2m", "multimask_output"]
        return {name: getattr(self, name) for name in names}


def build_sam21(model: str, device: torch.device) -> SAM2Base:
    """SAM 2.1 from the package's config, randomly initialised (tests; `load_sam21` fills in a checkpoint)."""
    return build_sam2(SAM21_CONFIGS[model], None, device=str(device), apply_postprocessing=False)


def load_sam21(checkpoint: Path, contents: CheckpointContents, device: torch.device) -> SAM2Base:
    """The SAM 2.1 network the checkpoint holds, with its weights (one line, not pages of keys, when they do not fit)."""
    return load_checked(build_sam21(contents.model, device), checkpoint, contents).eval()


@register
class Sam2Generator(CheckpointGenerator):
    """Coverage and mean_iou as for `sam`."""

    name = "sam2"
    Config = Sam2Config
    weights_family = SAM21_WEIGHTS

    def __init__(self, config: Sam2Config, rule: LabelMapRule = LabelMapRule(), model: SAM2Base | None = None) -> None:
        super().__init__(config, rule, model)
        self._amg: SAM2AutomaticMaskGenerator | None = None

    @property
    def amg(self) -> SAM2AutomaticMaskGenerator:
        """Built on first use, so a driver that only needs `settings_hash` never holds the network."""
        if self._amg is None:
            network = self.injected or load_sam21(self.checkpoint_path(), self.contents, self.device)
            amg = SAM2AutomaticMaskGenerator(network, **self.config.amg_options())
            amg.predictor = SAM2ImagePredictor(network)  # no low-res hole filling: it needs the CUDA extension
            self._amg = amg
        return self._amg

    def start(self) -> None:
        self.amg  # builds the network now: an unreadable or mismatched checkpoint fails here, once

    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        with torch.inference_mode():
            records = self.amg.generate(image)
        masks = np.stack([record["segmentation"] for record in records]) if records else np.zeros((0, *image.shape[:2]), dtype=bool)
        return dense_raw_masks(
            masks,
            predicted_ious=[record["predicted_iou"] for record in records],
            stability_scores=[record["stability_score"] for record in records],
        )
