"""`segpic masks`: image shards -> label-map shards and/or raw-mask shards, resumable.

Layout: for every image shard `IMAGES/part-i-of-n.parquet` each output folder gets a shard of
the same name with the same rows in the same order, plus `manifest.json`: `OUT` label maps
(`pipeline.shards.MASK_SCHEMA`), `RAW` the generator's raw masks (`RAW_SCHEMA`), kept by
default for the SAM family (beside OUT, as `OUT-raw`) so that `segpic repaint` can remake the
label maps with another rule without the network. Each finished shard is followed by a small
report (`pipeline.shard_outputs`; no timing, so equal inputs give equal bytes); a shard
counts as finished only when its report exists, so a killed run redoes at most the shards it
was writing (which were never visible: `ShardWriter` renames on success). Each shard records
the sha256 of the image shard it was made from (taken from the image manifest); a finished
shard is skipped only when both its settings and that checksum match, else the run is refused.

Refused before anything is written: an IMAGES folder that is not a complete image set; an
output folder that is IMAGES, the other output, a file, or holds shards or a manifest of
another kind; a second run while one holds an output's lock (`pipeline.output_folder`); a
generator that cannot start. A run in which every image failed exits with an error.

A failing image does not stop the run and does not break alignment: its rows are the
failure markers (`pipeline.shard_outputs`), and the manifests' `skipped` lists its id and
reason.

Job arrays: `--shard-index I --num-shards N` takes the image shards at positions
p with p % N == I. Every job rewrites the manifests from all reports present; they are
marked complete once every image shard has its shards.
"""

from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from pipeline.generators import MaskGenerator
from pipeline.local_engine import run_local
from pipeline.manifest import Manifest
from pipeline.mask_labelling import MasksConfig, failure_reason
from pipeline.output_folder import ensure_output_folder, locked_output
from pipeline.shard_outputs import MasksSummary, Output, Plan, ShardReport, check_output_folder, finished, refresh_manifest
from pipeline.shard_sets import read_complete_set
from pipeline.shards import IMAGE_KIND, open_parquet

MAX_ERROR_CHARS = 300


class GeneratorUnavailable(ValueError):
    """The mask generator cannot start (weights unreadable or mismatched, input folder missing)."""


def image_shard_checksums(images: Path) -> dict[str, str]:
    """Sha256 of every image shard, in order, from the image manifest; refuses anything but a complete image set."""
    _, entries = read_complete_set(images, IMAGE_KIND, "`segpic ingest`")
    return {name: entry.sha256 for name, entry in entries.items()}


def pending_work(config: MasksConfig, outputs: list[Output], checksums: dict[str, str]) -> tuple[Plan, list[str]]:
    """(this job's image shards with the outputs they still lack, names every output already holds)."""
    shards = [config.images / name for name in checksums]
    if config.num_shards is not None:
        shards = [path for position, path in enumerate(shards) if position % config.num_shards == config.shard_index]
    plan, done = [], []
    for path in shards:
        missing = [output for output in outputs if not finished(output, path.name, checksums[path.name])]
        if missing:
            plan.append((path, missing))
        else:
            done.append(path.name)
    return plan, done


def start_generator(generator: MaskGenerator) -> None:
    """Load what the generator needs now, so a bad checkpoint or folder fails once, in one line, before any shard."""
    try:
        generator.start()
    except Exception as error:  # whatever loading raises (unpickling, shape mismatch, I/O) means it cannot run
        reason = failure_reason(error).splitlines()[0][:MAX_ERROR_CHARS]
        raise GeneratorUnavailable(f"mask generator {generator.name} cannot start: {reason}") from error


def run_engine(config: MasksConfig, generator: MaskGenerator, plan: Plan, checksums: dict[str, str], progress: tqdm) -> list[ShardReport]:
    """Mask the planned shards with the configured engine; the one place that chooses it.

    Ray (`pipeline.ray_engine`, heavy to import, so only when chosen), one worker process per
    `--devices` entry (`pipeline.device_workers`), or `generator` in this process
    (`pipeline.local_engine`); each writes the same bytes.
    """
    if config.engine == "ray":
        from pipeline.ray_engine import run_ray

        return run_ray(config, plan, checksums, progress)
    if len(config.devices) > 1:
        from pipeline.device_workers import run_on_devices  # spawns processes: only for several devices

        return run_on_devices(config, plan, checksums, progress)
    return run_local(config, generator, plan, checksums, progress)


def refuse_empty_result(summary: MasksSummary, manifest: Manifest, out: Path) -> None:
    """Raise when this run labelled images but every one failed, or the finished set holds only failures."""
    all_failed = summary.images > 0 and summary.failed == summary.images
    if all_failed or (manifest.complete and manifest.rows > 0 and len(manifest.skipped) == manifest.rows):
        first = manifest.skipped[0] if manifest.skipped else None
        example = f" (first: {first.id}: {first.reason[:MAX_ERROR_CHARS]})" if first else ""
        raise ValueError(f"{out}: no image could be labelled, every row is a failure marker{example}")


def _summary(plan: Plan, done: list[str], reports: list[ShardReport]) -> MasksSummary:
    """What the run did, counting each image shard once however many outputs it wrote."""
    first = {}
    for report in reports:
        first.setdefault(report.entry.name, report)
    return MasksSummary(
        written=[path.name for path, _ in plan],
        already_done=done,
        images=sum(report.entry.rows for report in first.values()),
        failed=sum(len(report.failed) for report in first.values()),
    )


def make_masks(config: MasksConfig, generator: MaskGenerator | None = None) -> MasksSummary:
    """Run the masks stage with the configured engine; see the module docstring.

    Everything that can be checked is checked before anything is written: the settings,
    the image set, the output folders (not the images, not each other, not another kind or
    image set), their locks, and the generator itself (started once here). Tests and
    benchmarks may pass a `generator` they built (e.g. around a network of their own) for
    the local engine on one device.
    """
    generator = generator or config.build_generator()
    checksums = image_shard_checksums(config.images)
    outputs = config.outputs(generator)
    for output in outputs:
        others = [(other.folder, f"the {other.flag} folder") for other in outputs if other is not output]
        check_output_folder(output, [(config.images, "the image shard folder"), *others])
    job = None if config.num_shards is None else (config.shard_index, config.num_shards)
    with ExitStack() as locks:
        for output in outputs:
            ensure_output_folder(output.folder)
            locks.enter_context(locked_output(output.folder, job))
        plan, done = pending_work(config, outputs, checksums)
        if plan:
            start_generator(generator)
        total = sum(open_parquet(path).metadata.num_rows for path, _ in plan)
        with tqdm(total=total, unit="img", desc=f"masks ({generator.name})", disable=not config.progress) as progress:
            reports = run_engine(config, generator, plan, checksums, progress)
        summary = _summary(plan, done, reports)
        manifests = [refresh_manifest(output, list(checksums)) for output in outputs]
    summary.complete = all(manifest.complete for manifest in manifests)
    summary.raw = config.raw_folder(generator)
    refuse_empty_result(summary, manifests[0], outputs[0].folder)
    return summary
