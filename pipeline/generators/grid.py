"""`grid`: the g x g partition SegPIC uses at inference time, as a label map for comparisons."""

from dataclasses import dataclass

import numpy as np

from pipeline.generators.base import MaskGenerator, register
from pipeline.raw_mask_format import RawMasks, partition_raw_masks


@dataclass(frozen=True)
class GridConfig:
    grid: int = 4

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")


def grid_label_map(height: int, width: int, grid: int) -> np.ndarray:
    """(H, W) int32 ids row * g + col of equal cells (cell edges at floor(i * H / g))."""
    rows = (np.arange(height) * grid // height).astype(np.int32)
    cols = (np.arange(width) * grid // width).astype(np.int32)
    return rows[:, None] * grid + cols[None, :]


@register
class GridGenerator(MaskGenerator):
    """The cells are its raw masks. The rule leaves them as they are unless a cell is smaller than
    `speck_area` (not at the defaults: ingest keeps images of 64 px and more a side, so 4x4 cells
    have 256 px or more), so num_regions = g^2."""

    name = "grid"
    Config = GridConfig

    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        height, width = image.shape[:2]
        return partition_raw_masks(grid_label_map(height, width, self.config.grid))
