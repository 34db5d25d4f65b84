"""The masks stage's per-image work and its configuration, shared by every engine.

`masks.py` plans a run (which shards, which checks) and chooses the engine: `local_engine.py`
in this process, `device_workers.py` with one process per device, or `ray_engine.py` on a
cluster. All of them decode images, run the generator and turn its outcomes into shard rows
(`pipeline.shard_outputs`) through the functions here, so they write identical bytes and
none imports another.
"""

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
from PIL import Image

from pipeline.generators import MaskGenerator, build_generator, generator_class
from pipeline.label_maps import RULE_FIELDS
from pipeline.manifest import reproducible
from pipeline.shard_outputs import LabelMapOutput, Outcome, Output, RawMaskOutput
from pipeline.shards import DEFAULT_ROW_GROUP_BYTES, read_rows

RAW_SUFFIX = "-raw"
ENGINES = ("local", "ray")
LABEL_MAP_BYTES_PER_PIXEL = 8  # an int64 label map, the widest any generator builds
DEFAULT_MAX_LABEL_MAP_BYTES = 4 << 30


@dataclass(frozen=True)
class MasksConfig:
    """One masks run; `options` are generator settings as (key, value) pairs (values may be strings).

    `out` receives label maps and `raw` the raw masks; either may be None, not both. With
    `raw` None, `keep_raw` says whether raw masks go beside `out` anyway (`OUT-raw`): None
    leaves it to the generator (the SAM family keeps them). `max_label_map_bytes` guards
    memory: an image whose label map would need more is recorded as failed instead of being
    labelled.
    """

    images: Path
    out: Path | None
    generator: str
    options: tuple[tuple[str, Any], ...] = ()
    shard_index: int | None = None
    num_shards: int | None = None
    workers: int = 2
    engine: str = "local"
    ray_address: str = ""
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    max_label_map_bytes: int = DEFAULT_MAX_LABEL_MAP_BYTES
    progress: bool = False
    devices: tuple[str, ...] = ()  # local engine: one generator per device (e.g. cuda:0, cuda:1), each on its own shards
    raw: Path | None = None
    keep_raw: bool | None = None

    def __post_init__(self) -> None:
        if self.out is None and self.raw is None:
            raise ValueError("give --out (label maps), --raw (raw masks) or both")
        if self.raw is not None and self.keep_raw is False:
            raise ValueError("--raw and --no-raw contradict each other")
        if self.out is None and (rule_keys := [key for key, _ in self.options if key in RULE_FIELDS]):
            raise ValueError(
                f"{', '.join(rule_keys)}: label-map rule settings, but this run makes raw masks only (no --out); "
                "give them to `segpic repaint`"
            )
        if (self.shard_index is None) != (self.num_shards is None):
            raise ValueError("give --shard-index and --num-shards together")
        if self.num_shards is not None and not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard index {self.shard_index} is outside 0..{self.num_shards - 1}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.row_group_bytes <= 0 or self.max_label_map_bytes <= 0:
            raise ValueError("row-group size and label-map memory limit must be positive")
        if self.devices and self.engine != "local":
            raise ValueError("--devices is for the local engine; the Ray engine starts one actor per GPU itself")
        if any(not device.strip() for device in self.devices):
            raise ValueError(f"--devices has an empty entry: {','.join(self.devices)!r}")

    def build_generator(self, device: str | None = None) -> MaskGenerator:
        """The configured generator; `device` (or the only entry of `devices`) overrides its device setting."""
        options = dict(self.options)
        if self.devices and "device" not in get_type_hints(generator_class(self.generator).Config):
            raise ValueError(f"--devices needs a generator with a device setting (sam, sam2, sam3), not {self.generator!r}")
        device = device or (self.devices[0] if len(self.devices) == 1 else None)
        if device is not None:
            options["device"] = device
        return build_generator(self.generator, options)


    def raw_folder(self, generator: MaskGenerator) -> Path | None:
        """Where this run keeps raw masks: `raw`, else beside `out` when kept by choice or by the generator's default."""
        if self.raw is not None:
            return self.raw
        if self.keep_raw is False or not (self.keep_raw or generator.keeps_raw_masks):
            return None
        return self.out.with_name(self.out.name + RAW_SUFFIX)

    def outputs(self, generator: MaskGenerator) -> list[Output]:
        """What this run writes for every image shard: label maps into `out`, raw masks into `raw_folder`."""
        outputs: list[Output] = []
        if self.out is not None:
            outputs.append(LabelMapOutput(self.out, generator.name, generator.settings(), generator.rule))
        raw = self.raw_folder(generator)
        if raw is not None:
            outputs.append(RawMaskOutput(raw, generator.name, generator.network_settings()))
        return outputs


@dataclass(frozen=True)
class ImageRecord:
    """One image shard row, as much as the masks stage needs."""

    id: str
    data: bytes
    width: int
    height: int


class LabelMapTooLarge(MemoryError):
    """An image whose label map would exceed the configured memory limit."""


def failure_reason(error: BaseException) -> str:
    """`Type: message` without memory addresses, so reruns record identical reasons."""
    return reproducible(f"{type(error).__name__}: {error}")


def check_label_map_fits(record: ImageRecord, max_label_map_bytes: int) -> None:
    """Raise LabelMapTooLarge before any pixel is decoded when the label map would not fit."""
    needed = record.width * record.height * LABEL_MAP_BYTES_PER_PIXEL
    if needed > max_label_map_bytes:
        raise LabelMapTooLarge(
            f"{record.width}x{record.height} needs a {needed}-byte label map, over the {max_label_map_bytes}-byte limit"
        )


def decode_rgb(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image shard's bytes (ingest already fixed orientation and mode)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_or_error(record: ImageRecord, max_label_map_bytes: int) -> np.ndarray | Exception:
    """Decoded pixels, or why not (too large, undecodable), which the image's rows then record."""
    try:
        check_label_map_fits(record, max_label_map_bytes)
        return decode_rgb(record.data)
    except Exception as error:  # a corrupt image must not stop the run
        return error


def generate_outcomes(
    generator: MaskGenerator, records: Sequence[ImageRecord], images: Sequence[np.ndarray | Exception]
) -> list[Outcome]:
    """Each image's raw masks, or why it has none: one `regions_batch` call for the decoded images.

    When the batch call fails, its images are redone one at a time, so one bad image
    only costs its own row.
    """
    outcomes: list[Outcome] = [failure_reason(image) if isinstance(image, Exception) else "" for image in images]
    decoded = [index for index, image in enumerate(images) if not isinstance(image, Exception)]
    groups = [decoded] if decoded else []
    while groups:
        group = groups.pop(0)
        try:
            found = generator.regions_batch([images[index] for index in group], [records[index].id for index in group])
            for index, raw in zip(group, found):
                outcomes[index] = raw
        except Exception as error:  # one bad image must not stop a long run; the manifest records it
            if len(group) == 1:
                outcomes[group[0]] = failure_reason(error)
            else:
                groups = [[index] for index in group] + groups
    return outcomes


def read_records(path: Path) -> Iterator[ImageRecord]:
    """Image shard rows in order, one row group in memory at a time."""
    for row in read_rows(path, ["id", "image", "width", "height"]):
        yield ImageRecord(row["id"], row["image"]["bytes"], row["width"], row["height"])
