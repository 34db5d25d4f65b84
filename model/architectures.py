"""The one table of codec architectures: checkpoints store `arch` + `model_args` and are
rebuilt through `build_model`; `.segpic` files name the architecture the same way."""

from compressai.models import CompressionModel

from model.segpic import SegPIC
from model.wacnn import WACNN

ARCHITECTURES: dict[str, type[CompressionModel]] = {"segpic": SegPIC, "wacnn": WACNN}


def build_model(arch: str, **model_args) -> CompressionModel:
    """A freshly initialised codec of architecture `arch` (e.g. `build_model("segpic", N=48, M=80)`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](**model_args)


def architecture_name(model: CompressionModel) -> str:
    """The registry name of `model`'s class (the inverse of `build_model`)."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered architecture")
