"""The masks stage's per-image and per-shard work, shared by both engines (local and Ray).

`masks.py` plans a run (which shards, which checks) and `ray_engine.py` distributes it;
both label images and write mask shards through the functions here, so the two engines
write identical bytes and neither imports the other.

A failing image does not stop the run and does not break alignment: its row is the
failure marker (`pipeline.shards.FAILED_NUM_REGIONS` regions, an all-zero label map of
the image's size, `coverage` 0, `mean_iou` NaN) and its reason is recorded.
"""

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
from PIL import Image

from pipeline.generators import MaskGenerator, build_generator, generator_class
from pipeline.label_map_format import encode_label_map
from pipeline.label_maps import MaskResult
from pipeline.atomic_files import write_json_atomically
from pipeline.manifest import RecordNote, ShardEntry, reproducible, shard_entry
from pipeline.shards import DEFAULT_ROW_GROUP_BYTES, FAILED_NUM_REGIONS, MASK_SCHEMA, ShardWriter, read_rows

REPORTS_DIR = ".masks-reports"
ENGINES = ("local", "ray")
LABEL_MAP_BYTES_PER_PIXEL = 8  # an int64 label map, the widest any generator builds
DEFAULT_MAX_LABEL_MAP_BYTES = 4 << 30


@dataclass(frozen=True)
class MasksConfig:
    """One masks run; `options` are generator settings as (key, value) pairs (values may be strings).

    `max_label_map_bytes` guards memory: an image whose label map would need more is
    recorded as failed instead of being labelled.
    """

    images: Path
    out: Path
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

    def __post_init__(self) -> None:
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
            raise ValueError(f"--devices needs a generator with a device setting (sam, sam2), not {self.generator!r}")
        device = device or (self.devices[0] if len(self.devices) == 1 else None)
        if device is not None:
            options["device"] = device
        return build_generator(self.generator, options)


@dataclass(frozen=True)
class ImageRecord:
    """One image shard row, as much as the masks stage needs."""

    id: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ShardReport:
    """What a finished mask shard contributes to the manifest (its entry names the image shard's sha256)."""

    entry: ShardEntry
    failed: list[RecordNote]
    settings_hash: str

    @classmethod
    def read(cls, path: Path) -> "ShardReport":
        data = json.loads(path.read_text())
        return cls(ShardEntry(**data["entry"]), [RecordNote(**note) for note in data["failed"]], data["settings_hash"])


@dataclass
class MasksSummary:
    """What a run did: shards written and skipped as already finished, images and failures."""

    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    images: int = 0
    failed: int = 0
    complete: bool = False


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
    """Decoded pixels, or why not (too large, undecodable), which `mask_row` then records for this image."""
    try:
        check_label_map_fits(record, max_label_map_bytes)
        return decode_rgb(record.data)
    except Exception as error:  # a corrupt image must not stop the run
        return error


def failure_row(generator: MaskGenerator, record: ImageRecord) -> dict[str, Any]:
    """The failure marker row: all-zero label map of the image's recorded size (one byte per pixel)."""
    return {
        "id": record.id,
        "mask": {"bytes": encode_label_map(np.zeros((record.height, record.width), dtype=np.uint8)), "path": None},
        "num_regions": FAILED_NUM_REGIONS,
        "coverage": 0.0,
        "mean_iou": float("nan"),
        "generator": generator.name,
        "settings_hash": generator.settings_hash,
    }


def generate_outcomes(
    generator: MaskGenerator, records: Sequence[ImageRecord], images: Sequence[np.ndarray | Exception]
) -> list[MaskResult | Exception]:
    """Each image's label map, or the error that stopped it: one `generate_batch` call for the decoded images.

    When the batch call fails, its images are redone one at a time, so one bad image
    only costs its own row.
    """
    outcomes: list[MaskResult | Exception] = list(images)
    decoded = [index for index, image in enumerate(images) if not isinstance(image, Exception)]
    groups = [decoded] if decoded else []
    while groups:
        group = groups.pop(0)
        try:
            results = generator.generate_batch([images[index] for index in group], [records[index].id for index in group])
            for index, result in zip(group, results):
                outcomes[index] = result
        except Exception as error:  # one bad image must not stop a long run; the manifest records it
            if len(group) == 1:
                outcomes[group[0]] = error
            else:
                groups = [[index] for index in group] + groups
    return outcomes


def mask_row(generator: MaskGenerator, record: ImageRecord, outcome: MaskResult | Exception) -> tuple[dict[str, Any], RecordNote | None]:
    """The mask shard row for one image, and a note when it failed (see the module docstring)."""
    if isinstance(outcome, Exception):
        return failure_row(generator, record), RecordNote(record.id, failure_reason(outcome))
    row = {
        "id": record.id,
        "mask": {"bytes": encode_label_map(outcome.label_map), "path": None},
        "num_regions": outcome.stats.num_regions,
        "coverage": outcome.stats.coverage,
        "mean_iou": outcome.stats.mean_iou,
        "generator": generator.name,
        "settings_hash": generator.settings_hash,
    }
    return row, None


def read_records(path: Path) -> Iterator[ImageRecord]:
    """Image shard rows in order, one row group in memory at a time."""
    for row in read_rows(path, ["id", "image", "width", "height"]):
        yield ImageRecord(row["id"], row["image"]["bytes"], row["width"], row["height"])


def report_path(out: Path, shard: str) -> Path:
    return out / REPORTS_DIR / f"{shard}.json"


def write_mask_shard(
    out: Path,
    image_shard: Path,
    rows: Iterable[tuple[dict[str, Any], RecordNote | None]],
    settings_hash: str,
    row_group_bytes: int,
    image_sha256: str,
) -> ShardReport:
    """Write one mask shard atomically from its rows, then its report; returns the report."""
    failed = []
    target = out / image_shard.name
    with ShardWriter(target, MASK_SCHEMA, row_group_bytes=row_group_bytes) as writer:
        for row, failure in rows:
            writer.write(row)
            if failure is not None:
                failed.append(failure)
    entry = replace(shard_entry(target, writer.rows_written), image_sha256=image_sha256)
    report = ShardReport(entry, failed, settings_hash)
    path = report_path(out, image_shard.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, asdict(report))
    return report
