"""`grid`: the g x g partition SegPIC uses at inference time, as a label map for comparisons."""

from dataclasses import dataclass

import numpy as np

from pipeline.generators.base import MaskGenerator, register
from pipeline.label_maps import LabelMapStats, MaskResult


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
    """No clean-up rule applies: the cells are the regions (num_regions = g^2 for images >= g px)."""

    name = "grid"
    Config = GridConfig

    def generate(self, image: np.ndarray, image_id: str) -> MaskResult:
        height, width = image.shape[:2]
        label_map = grid_label_map(height, width, self.config.grid)
        stats = LabelMapStats(num_regions=int(label_map.max()) + 1, coverage=1.0, mean_iou=float("nan"))
        return MaskResult(label_map=label_map, stats=stats)
