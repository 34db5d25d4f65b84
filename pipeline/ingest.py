"""`segpic ingest`: a source of images -> image shards + `manifest.json`, resumable.

Shard names carry the total (`part-00003-of-00012.parquet`), which a streaming source only
reveals at its end, so a single run works in two phases:

1. Parts are written in source order into `OUT/.ingest-staging/` as `part-00000.parquet`,
   each closed at about `shard_bytes` and followed by a small JSON log (rows, how many
   source records it consumed, records skipped or fixed). A part without its log is
   unfinished and is discarded on restart; a restart skips the records the logged parts
   consumed, so no image is lost or written twice. Each log also lists the ids it consumed
   and its part's sha256: a restart checks the parts against their checksums (a damaged
   part and those after it are redone) and skips records by id, not by position, so a
   source that changed in between (files added or removed) loses and duplicates nothing;
   the summary says what changed.
2. At the end the parts are renamed to their final names in OUT, `manifest.json` is
   written and the staging folder removed. Re-running a finished ingest does nothing, or,
   when the source's ids have changed since, says what changed and refuses.

Refused before anything is written: an OUT that is a file or lies inside the source
folder (its shards would be read back as images), and a second run while one holds
OUT's lock (`pipeline.output_folder`). An ingest that ends with no image at all (empty
folder, every record unreadable) raises and leaves no trace of its work (no manifest, no
logs of the records it passed), so the same command run again after fixing the source
reads every record afresh. The same source spelt differently (relative or absolute,
trailing slash) resumes the same work.

Job arrays: with `num_shards=N`, job `shard_index=I` writes exactly one shard,
`part-0000I-of-0000N.parquet`, holding the source records whose position j satisfies
j % N == I (`shard_bytes` does not apply). All jobs may share OUT: names never collide.
Each job leaves a log in `OUT/.ingest-jobs/` and rewrites `manifest.json` from the logs
present; it is marked complete once all N shards exist (re-run any finished job to
refresh it). A killed job restarts its shard from scratch.
"""

import json
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.images import ImageLimits, ImageRejected, PreparedImage, prepare_image
from pipeline.atomic_files import write_json_atomically
from pipeline.manifest import (
    MANIFEST_NAME,
    Manifest,
    RecordNote,
    file_sha256,
    read_manifest,
    reproducible,
    shard_entry,
    write_manifest,
)
from pipeline.output_folder import ensure_output_folder, locked_output
from pipeline.shards import (
    DEFAULT_ROW_GROUP_BYTES,
    DEFAULT_SHARD_BYTES,
    IMAGE_KIND,
    IMAGE_SCHEMA,
    ShardWriter,
    read_rows,
    shard_name,
)
from pipeline.sources import ImageSource, SourceRecord, canonical_spec, open_source

STAGING_DIR = ".ingest-staging"
JOBS_DIR = ".ingest-jobs"
SETTINGS_FILE = "settings.json"
LOOKAHEAD_PER_WORKER = 4
EXAMPLES_SHOWN = 3


@dataclass(frozen=True)
class IngestConfig:
    """One ingest run; `settings()` is what must match for a restart to resume it."""

    source: str
    out: Path
    shard_bytes: int = DEFAULT_SHARD_BYTES
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    limits: ImageLimits = ImageLimits()
    limit: int | None = None
    shard_index: int | None = None
    num_shards: int | None = None
    workers: int = 2
    progress: bool = False

    def __post_init__(self) -> None:
        if self.shard_bytes <= 0 or self.row_group_bytes <= 0:
            raise ValueError("shard and row-group sizes must be positive")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must not be negative, got {self.limit}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if (self.shard_index is None) != (self.num_shards is None):
            raise ValueError("--shard-index and --num-shards go together")
        if self.num_shards is not None and not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard index {self.shard_index} is outside 0..{self.num_shards - 1}")

    def settings(self) -> dict[str, Any]:
        settings = {
            "source": self.source,
            "row_group_bytes": self.row_group_bytes,
            "max_pixels": self.limits.max_pixels,
            "min_side": self.limits.min_side,
            "limit": self.limit,
        }
        if self.num_shards is None:
            return {**settings, "shard_bytes": self.shard_bytes}
        return {**settings, "num_shards": self.num_shards}


@dataclass
class PartLog:
    """What one written part holds and which source records it accounted for."""

    rows: int = 0
    consumed: int = 0
    skipped: list[RecordNote] = field(default_factory=list)
    fixed: list[RecordNote] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    sha256: str = ""

    def save(self, path: Path) -> None:
        write_json_atomically(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "PartLog":
        data = json.loads(path.read_text())
        notes = {key: [RecordNote(**note) for note in data.pop(key)] for key in ("skipped", "fixed")}
        return cls(**data, **notes)


@dataclass(frozen=True)
class IngestSummary:
    """Counts for this run (`written`, `skipped`, `fixed`) and for the whole directory."""

    out: Path
    written: int
    skipped: int
    fixed: int
    total_rows: int
    shards: int
    seconds: float
    complete: bool
    skip_reasons: dict[str, int]
    notes: tuple[str, ...] = ()

    def line(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skip_reasons.items()))
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        state = "complete" if self.complete else "incomplete (other jobs pending)"
        return (
            f"{self.written} images written, {self.skipped} skipped" + (f" ({reasons})" if reasons else "")
            + f", {self.fixed} fixed, {rate:.1f} images/s; {self.out}: {self.total_rows} images "
            f"in {self.shards} shards, {state}" + "".join(f"; {note}" for note in self.notes)
        )


def _prepare(record: SourceRecord, limits: ImageLimits) -> PreparedImage | ImageRejected:
    try:
        return prepare_image(record.read(), limits)
    except ImageRejected as rejection:
        return rejection
    except (OSError, ValueError) as error:
        return ImageRejected("unreadable", reproducible(str(error)))


def prepared_records(
    records: Iterable[SourceRecord], limits: ImageLimits, workers: int
) -> Iterator[tuple[SourceRecord, PreparedImage | ImageRejected]]:
    """Read and validate records on `workers` threads (PIL decodes without the GIL), in source order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for record in records:
            pending.append((record, pool.submit(_prepare, record, limits)))
            if len(pending) >= workers * LOOKAHEAD_PER_WORKER:
                record, future = pending.popleft()
                yield record, future.result()
        while pending:
            record, future = pending.popleft()
            yield record, future.result()


def _shard_row(record: SourceRecord, image: PreparedImage) -> dict[str, Any]:
    name = record.name
    if image.fixes and name:
        name = str(Path(name).with_suffix(".png"))
    return {"id": record.id, "image": {"bytes": image.data, "path": name}, "width": image.width, "height": image.height}


def _fill_part(
    writer: ShardWriter, outcomes: Iterator, log: PartLog, shard_bytes: int | None, progress: tqdm
) -> bool:
    """Write outcomes until the part holds `shard_bytes`; True when the source ran out first."""
    for record, outcome in outcomes:
        log.consumed += 1
        log.ids.append(record.id)
        progress.update(1)
        if isinstance(outcome, ImageRejected):
            log.skipped.append(RecordNote(record.id, outcome.reason, reproducible(outcome.detail)))
            continue
        writer.write(_shard_row(record, outcome))
        log.rows += 1
        if outcome.fixes:
            log.fixed.append(RecordNote(record.id, "+".join(outcome.fixes)))
        if shard_bytes is not None and writer.bytes_written >= shard_bytes:
            return False
    return True


def _summary(
    config: IngestConfig, logs: list[PartLog], manifest: Manifest, seconds: float, notes: tuple[str, ...] = ()
) -> IngestSummary:
    skip_reasons: dict[str, int] = {}
    for log in logs:
        for note in log.skipped:
            skip_reasons[note.reason] = skip_reasons.get(note.reason, 0) + 1
    return IngestSummary(
        out=config.out,
        written=sum(log.rows for log in logs),
        skipped=sum(len(log.skipped) for log in logs),
        fixed=sum(len(log.fixed) for log in logs),
        total_rows=manifest.rows,
        shards=len(manifest.shards),
        seconds=seconds,
        complete=manifest.complete,
        skip_reasons=skip_reasons,
        notes=notes,
    )


def _progress(config: IngestConfig, source: ImageSource, done: int) -> tqdm:
    """Images/s and, when the source knows its size, ETA for this run's share of the records."""
    total = source.count()
    if total is not None and config.limit is not None:
        total = min(total, config.limit)
    if total is not None and config.num_shards is not None:
        total = len(range(config.shard_index, total, config.num_shards))
    return tqdm(desc=f"ingest {config.source}", unit="img", initial=done, total=total, disable=not config.progress)


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as compared between runs: JSON values, the source spelt canonically."""
    settings = json.loads(json.dumps(settings))
    return {**settings, "source": canonical_spec(settings.get("source", ""))}


def _claim(directory: Path, settings: dict[str, Any]) -> None:
    """Record the settings of the work in `directory`, refusing to mix it with different settings."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SETTINGS_FILE
    if path.is_file():
        if _comparable(json.loads(path.read_text())) != _comparable(settings):
            raise ValueError(f"{directory.parent} holds unfinished work made with other settings; use another --out")
        return
    write_json_atomically(path, settings)


def _existing_manifest(config: IngestConfig) -> Manifest | None:
    """The manifest already in OUT, if any; refuses one written with other settings.

    A manifest of no image at all (which older versions wrote) is not a finished set: it is ignored.
    """
    if not (config.out / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(config.out)
    if manifest.rows == 0:
        return None
    if _comparable(manifest.settings) != _comparable(config.settings()):
        raise ValueError(f"{config.out} already holds shards made with other settings; use another --out")
    return manifest


def _examples(ids: list[str]) -> str:
    shown = ", ".join(sorted(ids)[:EXAMPLES_SHOWN])
    return shown + (", ..." if len(ids) > EXAMPLES_SHOWN else "")


def _refuse_if_source_changed(config: IngestConfig, source: ImageSource, manifest: Manifest) -> None:
    """A finished set must still be the source's images: say what was added or removed instead of "0 written"."""
    if source.count() is None:  # a streamed source: listing its ids means reading it all
        return
    current = {record.id for record in islice(source.records(), config.limit)}
    recorded = {row["id"] for entry in manifest.shards for row in read_rows(config.out / entry.name, ["id"])}
    recorded |= {note.id for note in manifest.skipped}
    added, removed = sorted(current - recorded), sorted(recorded - current)
    if added or removed:
        raise ValueError(
            f"{config.out} is a finished ingest of {config.source}, which has changed since: "
            f"{len(added)} new ({_examples(added)}), {len(removed)} gone ({_examples(removed)}); ingest into a new --out"
        )


def _drop_parts_from(staging: Path, first: int) -> None:
    for path in staging.glob("part-*.*"):
        if int(path.stem.removeprefix("part-")) >= first:
            path.unlink()


def _staged_logs(staging: Path) -> tuple[list[PartLog], tuple[str, ...]]:
    """Logs of the finished parts, in order, and notes on parts redone.

    An unfinished part (no log) is deleted; a part whose file no longer matches its logged
    sha256 is deleted with every part after it, so their records are read again.
    """
    logs: list[PartLog] = []
    for index in range(len(list(staging.glob("part-*.json"))) + 1):
        log_path, part = staging / f"part-{index:05d}.json", staging / f"part-{index:05d}.parquet"
        if not log_path.is_file():
            part.unlink(missing_ok=True)
            break
        log = PartLog.load(log_path)
        if len(log.ids) != log.consumed:
            raise ValueError(f"{staging} was left by an older segpic that did not log ids; delete it to start over")
        if part.is_file() and file_sha256(part) != log.sha256:
            _drop_parts_from(staging, index)
            return logs, (f"staged {part.name} was damaged; it and later parts were redone",)
        logs.append(log)
    return logs, ()


class ResumeFilter:
    """Pass on the source records an interrupted run did not consume, matched by id, noting how the source changed."""

    def __init__(self, earlier: list[PartLog]) -> None:
        self.done = {record_id for log in earlier for record_id in log.ids}
        self.found = 0
        self.new = 0
        self.new_before_last_found = 0

    def __call__(self, records: Iterable[SourceRecord]) -> Iterator[SourceRecord]:
        for record in records:
            if record.id in self.done:
                self.found += 1
                self.new_before_last_found = self.new
            else:
                self.new += 1
                yield record

    def notes(self) -> tuple[str, ...]:
        """What changed in the source since the earlier parts were written (empty when nothing did)."""
        notes = []
        if self.new_before_last_found:
            notes.append(f"{self.new_before_last_found} new source record(s) among those already passed, ingested at the end")
        if self.found < len(self.done):
            notes.append(f"{len(self.done) - self.found} record(s) ingested earlier are no longer in the source (kept)")
        return tuple(notes)


class NothingIngested(ValueError):
    """A finished run found no image it could write."""


def _refuse_empty_set(config: IngestConfig, logs: list[PartLog], leftovers: list[Path]) -> None:
    """Raise when `logs` hold no image, after deleting `leftovers` (the run's logs and empty files).

    Kept, they would mark the set finished (so adding images would read as "the source changed")
    or mark the unreadable records consumed (so replacing a bad file would not be read again).
    """
    if any(log.rows for log in logs):
        return
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    counts = Counter(note.reason for log in logs for note in log.skipped)
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
    raise NothingIngested(f"{config.source}: no image could be ingested" + (f" ({reasons})" if reasons else " (no images found)"))


def _finalize(config: IngestConfig, logs: list[PartLog]) -> Manifest:
    """Rename staged parts to their final shard names, then write the manifest; idempotent."""
    staging = config.out / STAGING_DIR
    _refuse_empty_set(config, logs, [staging, config.out / MANIFEST_NAME])
    written = [index for index, log in enumerate(logs) if log.rows > 0]
    entries = []
    for position, index in enumerate(written):
        final = config.out / shard_name(position, len(written))
        staged = staging / f"part-{index:05d}.parquet"
        if staged.is_file():
            staged.replace(final)
        entries.append(shard_entry(final, logs[index].rows))
    manifest = Manifest(
        kind=IMAGE_KIND,
        settings=config.settings(),
        shards=entries,
        skipped=[note for log in logs for note in log.skipped],
        fixed=[note for log in logs for note in log.fixed],
    )
    write_manifest(config.out, manifest)
    shutil.rmtree(staging)
    return manifest


def _ingest_single(config: IngestConfig, source: ImageSource) -> IngestSummary:
    staging = config.out / STAGING_DIR
    finished = _existing_manifest(config)
    if finished is not None and not staging.exists():
        _refuse_if_source_changed(config, source, finished)
        return _summary(config, [], finished, 0.0)
    started = time.perf_counter()
    _claim(staging, config.settings())
    earlier, redone = _staged_logs(staging)
    resume = ResumeFilter(earlier)
    records = resume(islice(source.records(), config.limit))
    logs: list[PartLog] = []
    with _progress(config, source, sum(log.consumed for log in earlier)) as progress:
        outcomes = prepared_records(records, config.limits, config.workers)
        exhausted = False
        while not exhausted:
            log = PartLog()
            part = staging / f"part-{len(earlier) + len(logs):05d}.parquet"
            with ShardWriter(part, IMAGE_SCHEMA, config.row_group_bytes) as writer:
                exhausted = _fill_part(writer, outcomes, log, config.shard_bytes, progress)
            if log.rows == 0:
                part.unlink()
            if log.consumed:
                log.sha256 = file_sha256(part) if log.rows else ""
                log.save(part.with_suffix(".json"))
                logs.append(log)
    manifest = _finalize(config, earlier + logs)
    return _summary(config, logs, manifest, time.perf_counter() - started, redone + resume.notes())


def _job_manifest(config: IngestConfig, jobs: Path) -> Manifest:
    names = [shard_name(index, config.num_shards) for index in range(config.num_shards)]
    done = [(name, PartLog.load(jobs / f"{name}.json")) for name in names if (jobs / f"{name}.json").is_file()]
    if len(done) == config.num_shards:
        leftovers = [jobs, config.out / MANIFEST_NAME, *(config.out / name for name in names)]
        _refuse_empty_set(config, [log for _, log in done], leftovers)
    manifest = Manifest(
        kind=IMAGE_KIND,
        settings=config.settings(),
        shards=[shard_entry(config.out / name, log.rows) for name, log in done],
        skipped=[note for _, log in done for note in log.skipped],
        fixed=[note for _, log in done for note in log.fixed],
        complete=len(done) == config.num_shards,
    )
    write_manifest(config.out, manifest)
    return manifest


def _ingest_job(config: IngestConfig, source: ImageSource) -> IngestSummary:
    jobs = config.out / JOBS_DIR
    started = time.perf_counter()
    finished = _existing_manifest(config)
    if finished is not None and finished.complete:
        _refuse_if_source_changed(config, source, finished)
    _claim(jobs, config.settings())
    name = shard_name(config.shard_index, config.num_shards)
    log_path = jobs / f"{name}.json"
    logs: list[PartLog] = []
    if not (log_path.is_file() and (config.out / name).is_file()):
        mine = (
            record
            for position, record in enumerate(islice(source.records(), config.limit))
            if position % config.num_shards == config.shard_index
        )
        log = PartLog()
        writer = ShardWriter(config.out / name, IMAGE_SCHEMA, config.row_group_bytes)
        with _progress(config, source, 0) as progress, writer:
            _fill_part(writer, prepared_records(mine, config.limits, config.workers), log, None, progress)
        log.save(log_path)
        logs.append(log)
    return _summary(config, logs, _job_manifest(config, jobs), time.perf_counter() - started)


def _refuse_out_inside_source(source: ImageSource, out: Path) -> None:
    root = source.local_root()
    if root is not None and out.resolve().is_relative_to(root.resolve()):
        raise ValueError(
            f"--out {out} is inside the source folder {root}: its shards would be read back as input; "
            "choose an --out outside it"
        )


def ingest(config: IngestConfig) -> IngestSummary:
    """Turn `config.source` into image shards in `config.out`; resumes or completes earlier runs."""
    source = open_source(config.source)
    _refuse_out_inside_source(source, config.out)
    ensure_output_folder(config.out)
    job = None if config.num_shards is None else (config.shard_index, config.num_shards)
    with locked_output(config.out, job):
        return _ingest_single(config, source) if job is None else _ingest_job(config, source)
