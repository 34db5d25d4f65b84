"""`felzenszwalb`: scikit-image's graph segmentation, class-agnostic and weight-free (the offline SAM stand-in)."""

from dataclasses import dataclass

import numpy as np
from skimage.segmentation import felzenszwalb

from pipeline.generators.base import MaskGenerator, register
from pipeline.raw_mask_format import RawMasks, partition_raw_masks


@dataclass(frozen=True)
class FelzenszwalbConfig:
    """skimage.segmentation.felzenszwalb's parameters; larger `scale` means larger regions."""

    scale: float = 400.0
    sigma: float = 0.8
    min_size: int = 200

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.sigma < 0 or self.min_size < 0:
            raise ValueError(f"felzenszwalb needs scale > 0, sigma >= 0, min_size >= 0, got {self}")


@register
class FelzenszwalbGenerator(MaskGenerator):
    """Its segments are its raw masks: every pixel belongs to one, so coverage is 1; there is no predicted IoU (NaN)."""

    name = "felzenszwalb"
    Config = FelzenszwalbConfig

    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        segments = felzenszwalb(
            image, scale=self.config.scale, sigma=self.config.sigma, min_size=self.config.min_size, channel_axis=-1
        )
        return partition_raw_masks(segments)
