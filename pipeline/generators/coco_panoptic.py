"""`coco-panoptic`: import COCO panoptic PNGs (the masks the paper trained with), categories dropped.

Each PNG encodes a segment id per pixel as id = R + 256 G + 256^2 B; id 0 is unlabelled.
PNGs are matched to images by file stem (`train2017/000000000139.jpg` -> `000000000139.png`).
"""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.generators.base import MaskGenerator, register
from pipeline.raw_mask_format import RawMasks, partition_raw_masks


@dataclass(frozen=True)
class CocoPanopticConfig:
    """`panoptic_dir`: the folder of panoptic PNGs (e.g. `annotations/panoptic_train2017`)."""

    panoptic_dir: str = ""

    def __post_init__(self) -> None:
        if not self.panoptic_dir:
            raise ValueError("coco-panoptic needs panoptic_dir=<folder of panoptic PNGs>")


def panoptic_segment_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int64 segment ids."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@register
class CocoPanopticGenerator(MaskGenerator):
    """Its segments are its raw masks; unlabelled pixels (id 0) are left uncovered, so each connected
    unlabelled area becomes a region of its own (rule step 2) and coverage is the share of labelled pixels."""

    name = "coco-panoptic"
    Config = CocoPanopticConfig

    def start(self) -> None:
        if not Path(self.config.panoptic_dir).is_dir():
            raise FileNotFoundError(f"panoptic_dir {self.config.panoptic_dir}: no such folder")

    def png_path(self, image_id: str) -> Path:
        return Path(self.config.panoptic_dir) / f"{PurePosixPath(image_id).stem}.png"

    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        path = self.png_path(image_id)
        if not path.is_file():
            raise ValueError(f"{image_id}: no panoptic PNG {path}")
        with Image.open(path) as png:
            ids = panoptic_segment_ids(np.asarray(png.convert("RGB")))
        if ids.shape != image.shape[:2]:
            raise ValueError(f"{path}: panoptic PNG is {ids.shape[1]}x{ids.shape[0]}, image is {image.shape[1]}x{image.shape[0]}")
        return partition_raw_masks(ids, unlabelled=0)
