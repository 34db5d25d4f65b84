"""The one interface every mask generator implements, and the registry that names them.

A generator turns one decoded image into raw masks (`RawMasks`: what it found, before any
label-map rule); the shared `LabelMapRule` (`pipeline.label_maps`) makes them a label map
covering every pixel. Its settings are a frozen dataclass (`Config`) plus the rule:
`network_settings()` is what its raw masks depend on and `settings()` what its label maps
depend on; a shard records the hash of the one that made it (`settings_hash`), so a resumed
run can tell finished shards made with the same settings from foreign ones.
"""

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, get_type_hints

import numpy as np

from pipeline.label_maps import RULE_FIELDS, LabelMapRule, MaskResult, label_map_from_raw
from pipeline.manifest import settings_hash
from pipeline.raw_mask_format import RawMasks

GENERATORS: dict[str, type["MaskGenerator"]] = {}
LAZY_GENERATORS: dict[str, str] = {}  # name -> module that registers it when imported (heavy imports: torch, SAM)


class MaskGenerator(ABC):
    """Image (H, W, 3) uint8 -> raw masks -> label map; subclasses set `name` and `Config` and register."""

    name: ClassVar[str]
    Config: ClassVar[type]
    batch_size: int = 1  # images the masks stage hands to `regions_batch` at once
    keeps_raw_masks: ClassVar[bool] = False  # whether `segpic masks` keeps raw masks unless told otherwise

    def __init__(self, config: Any, rule: LabelMapRule = LabelMapRule()) -> None:
        self.config = config
        self.rule = rule

    @abstractmethod
    def regions(self, image: np.ndarray, image_id: str) -> RawMasks:
        """Raw masks of `image`; `image_id` is the shard row's id (some sources match on it)."""

    def start(self) -> None:
        """Load what `regions` needs (weights, folders) and raise if it cannot; the masks stage calls it once, first."""

    def regions_batch(self, images: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[RawMasks]:
        """Raw masks of several images (sizes may differ); generators that batch on a device override it."""
        return [self.regions(image, image_id) for image, image_id in zip(images, image_ids)]

    def generate(self, image: np.ndarray, image_id: str) -> MaskResult:
        """The label map of `image`: its raw masks through this generator's rule."""
        return label_map_from_raw(self.regions(image, image_id), self.rule)

    def network_settings(self) -> dict[str, Any]:
        """Everything that decides the raw masks: generator, its config, `identity()`."""
        return {"generator": self.name, "config": dataclasses.asdict(self.config), **self.identity()}

    def settings(self) -> dict[str, Any]:
        """Everything that decides the label maps: the network settings and the label-map rule."""
        return self.rule.applied_to(self.network_settings())

    def identity(self) -> dict[str, Any]:
        """Extra settings that are not config fields (e.g. which weights); none by default."""
        return {}

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """Every key `build_generator` accepts for this generator: its config's fields, then the label-map rule's.

        Read from the dataclasses themselves, so a setting added to either is listed in the
        unknown-option message and accepted by `--set` without another table to update.
        """
        return (*get_type_hints(cls.Config), *RULE_FIELDS)

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings())


def register(cls: type[MaskGenerator]) -> type[MaskGenerator]:
    """Class decorator: make a generator available under its `name`."""
    if cls.name in GENERATORS or (cls.name in LAZY_GENERATORS and cls.__module__ != LAZY_GENERATORS[cls.name]):
        raise ValueError(f"mask generator {cls.name!r} is registered twice")
    GENERATORS[cls.name] = cls
    return cls


def register_lazy(name: str, module: str) -> None:
    """Name a generator whose module (and its heavy imports) loads only when the generator is built."""
    if name in GENERATORS or name in LAZY_GENERATORS:
        raise ValueError(f"mask generator {name!r} is registered twice")
    LAZY_GENERATORS[name] = module


def generator_names() -> list[str]:
    """Every generator name, loaded or not."""
    return sorted({*GENERATORS, *LAZY_GENERATORS})


def generator_class(name: str) -> type[MaskGenerator]:
    """The class registered as `name`, importing its module first when it is a lazy one."""
    if name not in GENERATORS and name in LAZY_GENERATORS:
        importlib.import_module(LAZY_GENERATORS[name])
    if name not in GENERATORS:
        raise ValueError(f"unknown mask generator {name!r}; choose one of {', '.join(generator_names())}")
    return GENERATORS[name]


def _parse_value(kind: Any, value: Any, key: str) -> Any:
    """Convert a CLI string to the field's type (bool, int, float, str); typed values pass through."""
    if not isinstance(value, str) or kind is str:
        return value
    if kind is bool:
        if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
            raise ValueError(f"option {key}={value!r} is not a boolean")
        return value.lower() in {"true", "1", "yes"}
    converters: dict[Any, Callable[[str], Any]] = {int: int, float: float}
    try:
        return converters[kind](value)
    except (KeyError, ValueError) as error:
        raise ValueError(f"option {key}={value!r} is not a valid {getattr(kind, '__name__', kind)}") from error


def config_from_options(config_type: type, options: Mapping[str, Any]) -> Any:
    """Build a frozen config dataclass from `key -> value` options (strings are converted)."""
    hints = get_type_hints(config_type)
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; {config_type.__name__} takes {', '.join(hints)}")
    return config_type(**{key: _parse_value(hints[key], value, key) for key, value in options.items()})


def build_generator(name: str, options: Mapping[str, Any] | None = None, **resources: Any) -> MaskGenerator:
    """The generator `name` with `options` (config fields plus `speck_area`/`max_regions`).

    `resources` are passed to the constructor (e.g. `model=` an injected SAM for tests).
    """
    cls = generator_class(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.setting_names()))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for generator {name}; it takes {', '.join(cls.setting_names())}")
    rule_options = {key: options.pop(key) for key in RULE_FIELDS if key in options}
    return cls(config_from_options(cls.Config, options), config_from_options(LabelMapRule, rule_options), **resources)
