"""Mask generators: one registry of small classes behind `MaskGenerator` (`base`).

Importing the package registers `grid`, `felzenszwalb` and `coco-panoptic`; the SAM family
(`sam`, `sam2`, `sam3`, in `sam_family/`) is registered by module name and imported only when
one is built, so commands that never run SAM start without loading torch or a SAM package.

To add a generator: write a module with a frozen `Config` dataclass (its fields are the
`--set KEY=VALUE` settings) and a `MaskGenerator` subclass that sets `name` and `Config`,
returns `RawMasks` from `regions` (and batches in `regions_batch` if it can), and is decorated
with `@register`; then import the module here, or, if it imports something heavy, name it
with `register_lazy(name, module)` below. A network of the SAM family subclasses
`sam_family.checkpoint_generator.CheckpointGenerator` (weights, device) or, to run on the
batched engine, `sam_family.engine.generator.EngineGenerator`.
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
