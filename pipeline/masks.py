"""`segpic masks`: image shards -> mask shards (one label map per image), resumable.

Layout: for every image shard `IMAGES/part-i-of-n.parquet` the mask directory gets
`OUT/part-i-of-n.parquet` with the same rows in the same order (`pipeline.shards.MASK_SCHEMA`),
plus `manifest.json`. Each finished mask shard is followed by a small report in
`OUT/.masks-reports/<shard>.json` (its manifest entry, failures, timing, settings hash);
a shard counts as finished only when its report exists, so a killed run redoes at most
the shards it was writing (which were never visible: `ShardWriter` renames on success).
Restarting with other settings into the same OUT is refused.

A failing image does not stop the run and does not break alignment: its row holds an
all-zero label map of the image's size with `num_regions` 0 (the failure marker,
`coverage` 0, `mean_iou` NaN), and the manifest's `skipped` lists its id and reason.

Job arrays: `--shard-index I --num-shards N` takes the image shards at positions
p with p % N == I. Every job rewrites `manifest.json` from all reports present; it is
marked complete once every image shard has its mask shard.
"""

import io
import json
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipeline.generators import MaskGenerator, build_generator, generator_class
from pipeline.label_maps import MaskResult, encode_label_map
from pipeline.manifest import Manifest, RecordNote, ShardEntry, shard_entry, write_json_atomically, write_manifest
from pipeline.shards import DEFAULT_ROW_GROUP_BYTES, MASK_KIND, MASK_SCHEMA, ShardWriter, list_shards

REPORTS_DIR = ".masks-reports"
ENGINES = ("local", "ray")
PREFETCH_PER_WORKER = 4


@dataclass(frozen=True)
class MasksConfig:
    """One masks run; `options` are generator settings as (key, value) pairs (values may be strings)."""

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
    """What a finished mask shard contributes to the manifest."""

    entry: ShardEntry
    failed: list[RecordNote]
    seconds: float
    settings_hash: str

    @classmethod
    def read(cls, path: Path) -> "ShardReport":
        data = json.loads(path.read_text())
        return cls(ShardEntry(**data["entry"]), [RecordNote(**note) for note in data["failed"]], data["seconds"], data["settings_hash"])


@dataclass
class MasksSummary:
    """What a run did: shards written and skipped as already finished, images and failures."""

    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    images: int = 0
    failed: int = 0
    complete: bool = False


def decode_rgb(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image shard's bytes (ingest already fixed orientation and mode)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_or_error(data: bytes) -> np.ndarray | Exception:
    """Decoded pixels, or the decoding error, which `mask_row` then records for this image."""
    try:
        return decode_rgb(data)
    except Exception as error:  # a corrupt image must not stop the run
        return error


def generate_outcomes(generator: MaskGenerator, records: Sequence[ImageRecord], images: Sequence[np.ndarray | Exception]) -> list[MaskResult | Exception]:
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
        failure = RecordNote(record.id, f"{type(outcome).__name__}: {outcome}")
        label_map = np.zeros((record.height, record.width), dtype=np.int32)
        num_regions, coverage, mean_iou = 0, 0.0, float("nan")
    else:
        label_map, stats, failure = outcome.label_map, outcome.stats, None
        num_regions, coverage, mean_iou = stats.num_regions, stats.coverage, stats.mean_iou
    row = {
        "id": record.id,
        "mask": {"bytes": encode_label_map(label_map), "path": None},
        "num_regions": num_regions,
        "coverage": coverage,
        "mean_iou": mean_iou,
        "generator": generator.name,
        "settings_hash": generator.settings_hash,
    }
    return row, failure


def read_records(path: Path) -> Iterator[ImageRecord]:
    """Image shard rows in order, one row group in memory at a time."""
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        for row in parquet.read_row_group(group, columns=["id", "image", "width", "height"]).to_pylist():
            yield ImageRecord(row["id"], row["image"]["bytes"], row["width"], row["height"])


def _report_path(out: Path, shard: str) -> Path:
    return out / REPORTS_DIR / f"{shard}.json"


def pending_shards(config: MasksConfig, settings_hash: str) -> tuple[list[Path], list[str]]:
    """(image shards this job must still mask, names already finished with the same settings)."""
    shards = list_shards(config.images)
    if config.num_shards is not None:
        shards = [path for position, path in enumerate(shards) if position % config.num_shards == config.shard_index]
    todo, done = [], []
    for path in shards:
        report = _report_path(config.out, path.name)
        if not (report.is_file() and (config.out / path.name).is_file()):
            todo.append(path)
            continue
        found = ShardReport.read(report).settings_hash
        if found != settings_hash:
            raise ValueError(
                f"{config.out / path.name} was made with other settings (hash {found}, now {settings_hash}); use another --out"
            )
        done.append(path.name)
    return todo, done


def write_mask_shard(
    out: Path, image_shard: Path, rows: Iterable[tuple[dict[str, Any], RecordNote | None]], settings_hash: str, row_group_bytes: int
) -> ShardReport:
    """Write one mask shard atomically from its rows, then its report; returns the report."""
    started = time.perf_counter()
    failed = []
    target = out / image_shard.name
    with ShardWriter(target, MASK_SCHEMA, row_group_bytes=row_group_bytes) as writer:
        for row, failure in rows:
            writer.write(row)
            if failure is not None:
                failed.append(failure)
    report = ShardReport(shard_entry(target, writer.rows_written), failed, time.perf_counter() - started, settings_hash)
    path = _report_path(out, image_shard.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, asdict(report))
    return report


def _decoded_batches(image_shard: Path, pool: ThreadPoolExecutor, lookahead: int, batch_size: int) -> Iterator[list[tuple[ImageRecord, Future]]]:
    """The shard's records in batches of `batch_size`, decoded on `pool` at least `lookahead` images ahead."""
    queue: deque[tuple[ImageRecord, Future]] = deque()
    records = read_records(image_shard)
    for record in records:
        queue.append((record, pool.submit(decode_or_error, record.data)))
        if len(queue) >= max(lookahead, batch_size):
            yield [queue.popleft() for _ in range(batch_size)]
    while queue:
        yield [queue.popleft() for _ in range(min(batch_size, len(queue)))]


def _local_rows(generator: MaskGenerator, image_shard: Path, pool: ThreadPoolExecutor, lookahead: int, progress: tqdm) -> Iterator[tuple[dict[str, Any], RecordNote | None]]:
    """Label the shard's images in order, a batch at a time; threads decode the next images and encode
    the previous batch's label maps (PNG) while the generator works."""
    encoding: deque[list[Future]] = deque()
    for batch in _decoded_batches(image_shard, pool, lookahead, generator.batch_size):
        records = [record for record, _ in batch]
        outcomes = generate_outcomes(generator, records, [future.result() for _, future in batch])
        encoding.append([pool.submit(mask_row, generator, record, outcome) for record, outcome in zip(records, outcomes)])
        while len(encoding) > 1:
            for future in encoding.popleft():
                yield future.result()
                progress.update(1)
    for futures in encoding:
        for future in futures:
            yield future.result()
            progress.update(1)


def run_local(config: MasksConfig, generator: MaskGenerator, shards: list[Path], progress: tqdm) -> list[ShardReport]:
    """The local engine: one generator in this process (or one per `--devices` entry), decoding on `workers` threads."""
    if len(config.devices) > 1:
        from pipeline.device_workers import run_on_devices  # worker processes, one per device

        return run_on_devices(config, shards, progress)
    reports = []
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for shard in shards:
            rows = _local_rows(generator, shard, pool, config.workers * PREFETCH_PER_WORKER, progress)
            reports.append(write_mask_shard(config.out, shard, rows, generator.settings_hash, config.row_group_bytes))
    return reports


def refresh_manifest(config: MasksConfig, generator: MaskGenerator) -> bool:
    """Rewrite OUT/manifest.json from every report present; returns whether the set is complete."""
    names = [path.name for path in list_shards(config.images)]
    reports = [ShardReport.read(_report_path(config.out, name)) for name in names if _report_path(config.out, name).is_file()]
    complete = len(reports) == len(names)
    manifest = Manifest(
        kind=MASK_KIND,
        settings=generator.settings(),
        shards=[report.entry for report in reports],
        skipped=[note for report in reports for note in report.failed],
        seconds=sum(report.seconds for report in reports),
        complete=complete,
    )
    write_manifest(config.out, manifest)
    return complete


def make_masks(config: MasksConfig) -> MasksSummary:
    """Run the masks stage with the configured engine; see the module docstring."""
    generator = config.build_generator()
    todo, done = pending_shards(config, generator.settings_hash)
    config.out.mkdir(parents=True, exist_ok=True)
    total = sum(pq.ParquetFile(path).metadata.num_rows for path in todo)
    with tqdm(total=total, unit="img", desc=f"masks ({generator.name})", disable=not config.progress) as progress:
        if config.engine == "ray":
            from pipeline.ray_engine import run_ray  # Ray is heavy to import; only this engine needs it

            reports = run_ray(config, todo, progress)
        else:
            reports = run_local(config, generator, todo, progress)
    summary = MasksSummary(
        written=[report.entry.name for report in reports],
        already_done=done,
        images=sum(report.entry.rows for report in reports),
        failed=sum(len(report.failed) for report in reports),
    )
    summary.complete = refresh_manifest(config, generator)
    return summary
