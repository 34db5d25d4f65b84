"""Mask generators: one registry (`GENERATORS`) of small classes behind `MaskGenerator`.

Importing the package registers `grid`, `felzenszwalb`, `coco-panoptic` and `sam`.
"""

from pipeline.generators import coco_panoptic, felzenszwalb, grid, sam
from pipeline.generators.base import GENERATORS, MaskGenerator, build_generator, register

__all__ = ["GENERATORS", "MaskGenerator", "build_generator", "register", "coco_panoptic", "felzenszwalb", "grid", "sam"]
