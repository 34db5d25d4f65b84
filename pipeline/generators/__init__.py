"""Mask generators: one registry of small classes behind `MaskGenerator`.

Importing the package registers `grid`, `felzenszwalb` and `coco-panoptic`; the SAM family
(`sam`, `sam2`) is registered by module name and imported only when one is built, so
commands that never run SAM start without loading torch or segment-anything
(`register_lazy(name, module)` adds another such generator).
"""

from pipeline.generators import coco_panoptic, felzenszwalb, grid
from pipeline.generators.base import GENERATORS, MaskGenerator, build_generator, generator_class, generator_names, register, register_lazy

register_lazy("sam", "pipeline.generators.sam_family.sam.generator")
register_lazy("sam2", "pipeline.generators.sam_family.sam2.generator")
register_lazy("sam3", "pipeline.generators.sam_family.sam3.generator")

__all__ = [
    "GENERATORS", "MaskGenerator", "build_generator", "generator_class", "generator_names", "register", "register_lazy",
    "coco_panoptic", "felzenszwalb", "grid",
]
