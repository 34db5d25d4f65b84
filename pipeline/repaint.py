"""`segpic repaint`: raw-mask shards -> label-map shards by another rule, without the network.

The network pass is the expensive step of the masks stage; what a study of partitions varies
is the label-map rule (`pipeline.label_maps`: how many regions, how small, which masks count).
`segpic masks` keeps the generator's raw masks (`pipeline.shards.RAW_SCHEMA`); repainting them
writes, for every raw shard, the label-map shard of the same name through the same outputs
(`pipeline.shard_outputs`), so it is byte-identical to what `segpic masks` writes with that rule
on the same images, and `segpic verify IMAGES --masks OUT` checks it against the image shards.

Refused before anything is written, each with one line: a RAW folder that holds no complete raw
set (no manifest, another kind, jobs pending, or its manifest does not list its files), a rule
setting that is unknown or out of range, a raw shard to read whose sha256 is not the
manifest's (damaged or truncated), an OUT that is RAW or holds another kind of shards, a
second run while one holds OUT's lock. Like the masks stage, a killed run resumes (finished
shards are skipped), and a finished OUT shard made from another raw shard or another rule is
refused, never taken as done.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.generators.base import config_from_options
from pipeline.label_maps import LabelMapRule
from pipeline.output_folder import ensure_output_folder, locked_output
from pipeline.raw_sets import check_checksums, raw_outcome, read_raw_set
from pipeline.shard_outputs import LabelMapOutput, MasksSummary, Rows, check_output_folder, finished, refresh_manifest, write_outputs
from pipeline.shards import DEFAULT_ROW_GROUP_BYTES, read_rows

ROWS_AHEAD = 16  # raw rows handed to the threads before the first is written


@dataclass(frozen=True)
class RepaintConfig:
    """One repaint run: `options` are label-map rule settings as (key, value) pairs (values may be strings)."""

    raw: Path
    out: Path
    options: tuple[tuple[str, Any], ...] = ()
    workers: int = 2
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    progress: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class RawRecord:
    """A raw row's image: its id and size (what a label-map row needs besides the masks)."""

    id: str
    width: int
    height: int


def _repainted_rows(output: LabelMapOutput, raw_shard: Path, pool: ThreadPoolExecutor, progress: tqdm) -> Iterator[list[Rows]]:
    """Each raw row's label-map row, in order, made on `pool` a few rows ahead of the writer."""
    pending = []
    for row in read_rows(raw_shard):
        record, outcome = RawRecord(row["id"], row["width"], row["height"]), raw_outcome(row, raw_shard)
        pending.append(pool.submit(output.row, record, outcome))
        if len(pending) > ROWS_AHEAD:
            yield [pending.pop(0).result()]
            progress.update(1)
    for future in pending:
        yield [future.result()]
        progress.update(1)


def repaint(config: RepaintConfig) -> MasksSummary:
    """Write OUT's label-map shards from RAW's raw masks by the configured rule; see the module docstring."""
    rule = config_from_options(LabelMapRule, dict(config.options))
    manifest, entries = read_raw_set(config.raw)
    output = LabelMapOutput(config.out, manifest.settings["generator"], rule.applied_to(manifest.settings), rule)
    check_output_folder(output, [(config.raw, "the raw mask folder")])
    ensure_output_folder(config.out)
    with locked_output(config.out):
        todo = [entry for entry in entries.values() if not finished(output, entry.name, entry.image_sha256, entry.sha256)]
        check_checksums(config.raw, todo)
        with tqdm(total=sum(entry.rows for entry in todo), unit="img", desc="repaint", disable=not config.progress) as progress:
            with ThreadPoolExecutor(max_workers=config.workers) as pool:
                reports = [
                    report
                    for entry in todo
                    for report in write_outputs(
                        [output], entry.name, _repainted_rows(output, config.raw / entry.name, pool, progress),
                        config.row_group_bytes, entry.image_sha256, raw_sha256=entry.sha256,
                    )
                ]
        written = refresh_manifest(output, list(entries))
    return MasksSummary(
        written=[entry.name for entry in todo],
        already_done=[name for name in entries if name not in {entry.name for entry in todo}],
        images=sum(report.entry.rows for report in reports),
        failed=sum(len(report.failed) for report in reports),
        complete=written.complete,
    )
