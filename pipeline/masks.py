"""`segpic masks`: image shards -> mask shards (one label map per image), resumable.

Layout: for every image shard `IMAGES/part-i-of-n.parquet` the mask directory gets
`OUT/part-i-of-n.parquet` with the same rows in the same order (`pipeline.shards.MASK_SCHEMA`),
plus `manifest.json`. Each finished mask shard is followed by a small report in
`OUT/.masks-reports/<shard>.json` (its manifest entry, failures, settings hash; no timing,
so equal inputs give equal bytes);
a shard counts as finished only when its report exists, so a killed run redoes at most
the shards it was writing (which were never visible: `ShardWriter` renames on success).
Each mask shard records the sha256 of the image shard it was made from (taken from the
image manifest); a finished shard is skipped only when both its settings and that
checksum match, else the run is refused.

Refused before anything is written: an IMAGES folder that is not a complete image set;
an OUT that is IMAGES, a file, or holds shards or a manifest of another kind; a second
run while one holds OUT's lock (`pipeline.output_folder`); a generator that cannot start.
A run in which every image failed exits with an error.

A failing image does not stop the run and does not break alignment: its row is the
failure marker (`pipeline.mask_labelling`), and the manifest's `skipped` lists its id
and reason.

Job arrays: `--shard-index I --num-shards N` takes the image shards at positions
p with p % N == I. Every job rewrites `manifest.json` from all reports present; it is
marked complete once every image shard has its mask shard.
"""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.generators import MaskGenerator
from pipeline.manifest import MANIFEST_NAME, Manifest, RecordNote, read_manifest, write_manifest
from pipeline.mask_labelling import (
    ImageRecord,
    MasksConfig,
    MasksSummary,
    ShardReport,
    decode_or_error,
    failure_reason,
    generate_outcomes,
    mask_row,
    read_records,
    report_path,
    write_mask_shard,
)
from pipeline.output_folder import ensure_output_folder, locked_output
from pipeline.shards import IMAGE_KIND, MASK_KIND, list_shards, open_parquet, shard_files, shard_kind

PREFETCH_PER_WORKER = 4
MAX_ERROR_CHARS = 300


class GeneratorUnavailable(ValueError):
    """The mask generator cannot start (weights unreadable or mismatched, input folder missing)."""


def image_shard_checksums(images: Path) -> dict[str, str]:
    """Sha256 of every image shard, in order, from the image manifest; refuses anything but a complete image set."""
    shards = list_shards(images)
    try:
        manifest = read_manifest(images)
    except FileNotFoundError as error:
        raise ValueError(f"{images}: no {MANIFEST_NAME}; give the image shard folder written by `segpic ingest`") from error
    if manifest.kind != IMAGE_KIND:
        raise ValueError(f"{images} holds {manifest.kind} shards, not image shards")
    if not manifest.complete:
        raise ValueError(f"{images}: the image set is incomplete (ingest jobs pending)")
    listed = {entry.name: entry.sha256 for entry in manifest.shards}
    if sorted(listed) != [path.name for path in shards]:
        raise ValueError(f"{images}/{MANIFEST_NAME} does not list exactly the shard files present; run `segpic verify`")
    return {path.name: listed[path.name] for path in shards}


def check_output_folder(config: MasksConfig) -> None:
    """Refuse an OUT that is the image folder or holds anything but mask shards, before writing anything."""
    out = config.out
    if out.resolve() == config.images.resolve():
        raise ValueError(f"--out {out} is the image shard folder; mask shards need a folder of their own")
    if not out.is_dir():
        return
    if (out / MANIFEST_NAME).is_file() and (kind := read_manifest(out).kind) != MASK_KIND:
        raise ValueError(f"--out {out} holds {kind} shards ({MANIFEST_NAME}); mask shards need a folder of their own")
    for path in shard_files(out):
        if (kind := shard_kind(path)) != MASK_KIND:
            raise ValueError(f"--out {out} holds {kind} shards ({path.name}); mask shards need a folder of their own")


def pending_shards(config: MasksConfig, settings_hash: str, checksums: dict[str, str]) -> tuple[list[Path], list[str]]:
    """(image shards this job must still mask, names already finished from the same image shards and settings)."""
    shards = [config.images / name for name in checksums]
    if config.num_shards is not None:
        shards = [path for position, path in enumerate(shards) if position % config.num_shards == config.shard_index]
    todo, done = [], []
    for path in shards:
        report_file = report_path(config.out, path.name)
        report = ShardReport.read(report_file) if report_file.is_file() and (config.out / path.name).is_file() else None
        if report is None or report.entry.image_sha256 is None:  # unfinished, or too old to say what it was made from
            todo.append(path)
            continue
        if report.settings_hash != settings_hash:
            raise ValueError(
                f"{config.out / path.name} was made with other settings (hash {report.settings_hash}, now {settings_hash}); "
                "use another --out"
            )
        if report.entry.image_sha256 != checksums[path.name]:
            raise ValueError(f"{config.out / path.name} was made from another image set (its image shard differs); use another --out")
        done.append(path.name)
    return todo, done


def start_generator(generator: MaskGenerator) -> None:
    """Load what the generator needs now, so a bad checkpoint or folder fails once, in one line, before any shard."""
    try:
        generator.start()
    except Exception as error:  # whatever loading raises (unpickling, shape mismatch, I/O) means it cannot run
        reason = failure_reason(error).splitlines()[0][:MAX_ERROR_CHARS]
        raise GeneratorUnavailable(f"mask generator {generator.name} cannot start: {reason}") from error


def _decoded_batches(
    image_shard: Path, pool: ThreadPoolExecutor, lookahead: int, batch_size: int, max_label_map_bytes: int
) -> Iterator[list[tuple[ImageRecord, Future]]]:
    """The shard's records in batches of `batch_size`, decoded on `pool` at least `lookahead` images ahead."""
    queue: deque[tuple[ImageRecord, Future]] = deque()
    for record in read_records(image_shard):
        queue.append((record, pool.submit(decode_or_error, record, max_label_map_bytes)))
        if len(queue) >= max(lookahead, batch_size):
            yield [queue.popleft() for _ in range(batch_size)]
    while queue:
        yield [queue.popleft() for _ in range(min(batch_size, len(queue)))]


def _local_rows(
    generator: MaskGenerator, image_shard: Path, pool: ThreadPoolExecutor, lookahead: int, max_label_map_bytes: int, progress: tqdm
) -> Iterator[tuple[dict[str, Any], RecordNote | None]]:
    """Label the shard's images in order, a batch at a time; threads decode the next images and encode
    the previous batch's label maps (PNG) while the generator works."""
    encoding: deque[list[Future]] = deque()
    for batch in _decoded_batches(image_shard, pool, lookahead, generator.batch_size, max_label_map_bytes):
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


def run_local(
    config: MasksConfig, generator: MaskGenerator, shards: list[Path], checksums: dict[str, str], progress: tqdm
) -> list[ShardReport]:
    """The local engine: one generator in this process (or one per `--devices` entry), decoding on `workers` threads."""
    if len(config.devices) > 1:
        from pipeline.device_workers import run_on_devices  # worker processes, one per device

        return run_on_devices(config, shards, checksums, progress)
    reports = []
    lookahead = config.workers * PREFETCH_PER_WORKER
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        for shard in shards:
            rows = _local_rows(generator, shard, pool, lookahead, config.max_label_map_bytes, progress)
            report = write_mask_shard(config.out, shard, rows, generator.settings_hash, config.row_group_bytes, checksums[shard.name])
            reports.append(report)
    return reports


def refresh_manifest(config: MasksConfig, generator: MaskGenerator, names: list[str]) -> Manifest:
    """Rewrite OUT/manifest.json from the reports of the image shards `names` present; returns it."""
    reports = [ShardReport.read(report_path(config.out, name)) for name in names if report_path(config.out, name).is_file()]
    manifest = Manifest(
        kind=MASK_KIND,
        settings=generator.settings(),
        shards=[report.entry for report in reports],
        skipped=[note for report in reports for note in report.failed],
        complete=len(reports) == len(names),
    )
    write_manifest(config.out, manifest)
    return manifest


def refuse_empty_result(summary: MasksSummary, manifest: Manifest, out: Path) -> None:
    """Raise when this run labelled images but every one failed, or the finished set holds only failures."""
    all_failed = summary.images > 0 and summary.failed == summary.images
    if all_failed or (manifest.complete and manifest.rows > 0 and len(manifest.skipped) == manifest.rows):
        first = manifest.skipped[0] if manifest.skipped else None
        example = f" (first: {first.id}: {first.reason[:MAX_ERROR_CHARS]})" if first else ""
        raise ValueError(f"{out}: no image could be labelled, every row is a failure marker{example}")


def make_masks(config: MasksConfig) -> MasksSummary:
    """Run the masks stage with the configured engine; see the module docstring.

    Everything that can be checked is checked before anything is written: the settings,
    the image set, the output folder (not the images, not another kind or image set), the
    lock, and the generator itself (started once here).
    """
    generator = config.build_generator()
    checksums = image_shard_checksums(config.images)
    check_output_folder(config)
    ensure_output_folder(config.out)
    job = None if config.num_shards is None else (config.shard_index, config.num_shards)
    with locked_output(config.out, job):
        todo, done = pending_shards(config, generator.settings_hash, checksums)
        if todo:
            start_generator(generator)
        total = sum(open_parquet(path).metadata.num_rows for path in todo)
        with tqdm(total=total, unit="img", desc=f"masks ({generator.name})", disable=not config.progress) as progress:
            if config.engine == "ray":
                from pipeline.ray_engine import run_ray  # Ray is heavy to import; only this engine needs it

                reports = run_ray(config, todo, checksums, progress)
            else:
                reports = run_local(config, generator, todo, checksums, progress)
        summary = MasksSummary(
            written=[report.entry.name for report in reports],
            already_done=done,
            images=sum(report.entry.rows for report in reports),
            failed=sum(len(report.failed) for report in reports),
        )
        manifest = refresh_manifest(config, generator, list(checksums))
    summary.complete = manifest.complete
    refuse_empty_result(summary, manifest, config.out)
    return summary
