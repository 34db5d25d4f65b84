"""What the masks stage writes for each image shard: label-map shards, raw-mask shards, or both.

Every image has an outcome, its raw masks (`RawMasks`) or the reason it failed; each output
turns outcomes into rows of its own shard kind (`pipeline.shards`): a `LabelMapOutput` applies
the label-map rule (`pipeline.label_maps`), a `RawMaskOutput` keeps the masks. `segpic masks`
(every engine) and `segpic repaint` write through `write_outputs`, so a label map made from
the network's masks and one made from the same masks read back from a raw shard are made by
the same code from equal inputs, and their shards are byte-identical.

A failing image does not stop a run and does not break alignment: its label-map row is the
failure marker (`pipeline.shards.FAILED_NUM_REGIONS` regions, an all-zero label map of the
image's size, `coverage` 0, `mean_iou` NaN), its raw row holds no masks and the reason, and
the shard's report lists it. Each finished shard is followed by its report
(`<folder>/.masks-reports/<shard>.json`: manifest entry, failures, settings hash, and for a
repainted shard the sha256 of the raw shard it was made from); a shard counts as finished only
when its report exists.
"""

import json
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.atomic_files import write_json_atomically
from pipeline.label_map_format import encode_label_map
from pipeline.label_maps import LabelMapRule, label_map_from_raw
from pipeline.manifest import MANIFEST_NAME, Manifest, RecordNote, ShardEntry, read_manifest, settings_hash, shard_entry, write_manifest
from pipeline.raw_mask_format import RawMasks
from pipeline.shards import FAILED_NUM_REGIONS, MASK_KIND, MASK_SCHEMA, RAW_KIND, RAW_SCHEMA, ShardWriter, shard_files, shard_kind

REPORTS_DIR = ".masks-reports"

Outcome = RawMasks | str
"""An image's raw masks, or why it has none (`Type: message`)."""

Rows = tuple[dict[str, Any], RecordNote | None]
"""One output's row for an image, and the note naming it when it failed."""


class SizedRecord(Protocol):
    """What an output needs to know of an image: its row id and size."""

    id: str
    width: int
    height: int


@dataclass(frozen=True)
class ShardReport:
    """What a finished shard contributes to its manifest (its entry names the image shard's sha256)."""

    entry: ShardEntry
    failed: list[RecordNote]
    settings_hash: str
    raw_sha256: str | None = None  # a repainted shard: the raw shard it was made from

    @classmethod
    def read(cls, path: Path) -> "ShardReport":
        data = json.loads(path.read_text())
        failed = [RecordNote(**note) for note in data["failed"]]
        return cls(ShardEntry(**data["entry"]), failed, data["settings_hash"], data.get("raw_sha256"))


@dataclass
class MasksSummary:
    """What a masks or repaint run did: shards written and skipped as already finished, images and failures."""

    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    images: int = 0
    failed: int = 0
    complete: bool = False
    raw: Path | None = None  # where raw masks went, if kept


def report_path(folder: Path, shard: str) -> Path:
    return folder / REPORTS_DIR / f"{shard}.json"


def finished_report(folder: Path, shard: str) -> ShardReport | None:
    """The report of `folder/shard` when both exist (a finished shard), else None."""
    path = report_path(folder, shard)
    return ShardReport.read(path) if path.is_file() and (folder / shard).is_file() else None


@dataclass(frozen=True)
class LabelMapOutput:
    """Label maps made by `rule`, in shards of `MASK_SCHEMA` naming `generator` and the hash of `settings`."""

    folder: Path
    generator: str
    settings: dict[str, Any]  # what made them: the raw masks' settings and the rule (`LabelMapRule.applied_to`)
    rule: LabelMapRule
    schema: pa.Schema = MASK_SCHEMA
    kind: str = MASK_KIND
    flag: str = "--out"  # the option that names `folder`, for messages

    def row(self, record: SizedRecord, outcome: Outcome) -> Rows:
        if isinstance(outcome, str):
            return self._failure_row(record), RecordNote(record.id, outcome)
        result = label_map_from_raw(outcome, self.rule)
        row = {
            "id": record.id,
            "mask": {"bytes": encode_label_map(result.label_map), "path": None},
            "num_regions": result.stats.num_regions,
            "coverage": result.stats.coverage,
            "mean_iou": result.stats.mean_iou,
            "generator": self.generator,
            "settings_hash": self.settings_hash,
        }
        return row, None

    @cached_property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)

    def _failure_row(self, record: SizedRecord) -> dict[str, Any]:
        """The failure marker: all-zero label map of the image's recorded size (one byte per pixel)."""
        return {
            "id": record.id,
            "mask": {"bytes": encode_label_map(np.zeros((record.height, record.width), dtype=np.uint8)), "path": None},
            "num_regions": FAILED_NUM_REGIONS,
            "coverage": 0.0,
            "mean_iou": float("nan"),
            "generator": self.generator,
            "settings_hash": self.settings_hash,
        }


@dataclass(frozen=True)
class RawMaskOutput:
    """Raw masks, in shards of `RAW_SCHEMA` naming `generator` and the hash of `settings` (the generator's network settings)."""

    folder: Path
    generator: str
    settings: dict[str, Any]
    schema: pa.Schema = RAW_SCHEMA
    kind: str = RAW_KIND
    flag: str = "--raw"

    def row(self, record: SizedRecord, outcome: Outcome) -> Rows:
        failed = isinstance(outcome, str)
        row = {
            "id": record.id,
            "width": record.width,
            "height": record.height,
            "masks": [] if failed else outcome.to_rows(),
            "failure": outcome if failed else None,
            "generator": self.generator,
            "settings_hash": self.settings_hash,
        }
        return row, RecordNote(record.id, outcome) if failed else None

    @cached_property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)


Output = LabelMapOutput | RawMaskOutput

Plan = list[tuple[Path, list[Output]]]
"""Image shards still to process, each with the outputs that still lack its shard."""


def check_output_folder(output: Output, taken: Sequence[tuple[Path, str]]) -> None:
    """Refuse a folder that is one of the run's other folders (`taken`: folder, what it is) or holds shards of another kind."""
    folder = output.folder
    for other, what in taken:
        if folder.resolve() == Path(other).resolve():
            raise ValueError(f"{output.flag} {folder} is {what}; {output.kind} shards need a folder of their own")
    if not folder.is_dir():
        return
    if (folder / MANIFEST_NAME).is_file() and (kind := read_manifest(folder).kind) != output.kind:
        raise ValueError(f"{output.flag} {folder} holds {kind} shards ({MANIFEST_NAME}); {output.kind} shards need a folder of their own")
    for path in shard_files(folder):
        if (kind := shard_kind(path)) != output.kind:
            raise ValueError(f"{output.flag} {folder} holds {kind} shards ({path.name}); {output.kind} shards need a folder of their own")


def finished(output: Output, shard: str, image_sha256: str, raw_sha256: str | None = None) -> bool:
    """Whether `output` already holds shard `shard` made from these inputs; raises when it holds one made from others."""
    report = finished_report(output.folder, shard)
    if report is None or report.entry.image_sha256 is None:  # unfinished, or too old to say what it was made from
        return False
    where, cure = output.folder / shard, f"use another {output.flag}"
    if report.settings_hash != output.settings_hash:
        raise ValueError(f"{where} was made with other settings (hash {report.settings_hash}, now {output.settings_hash}); {cure}")
    if report.entry.image_sha256 != image_sha256:
        raise ValueError(f"{where} was made from another image set (its image shard differs); {cure}")
    if raw_sha256 is not None and report.raw_sha256 != raw_sha256:
        raise ValueError(f"{where} was made from another raw mask set (its raw shard differs); {cure}")
    return True


def refresh_manifest(output: Output, names: Sequence[str]) -> Manifest:
    """Rewrite the output's manifest from the reports of the shards `names` present; complete when all are."""
    reports = [report for name in names if (report := finished_report(output.folder, name)) is not None]
    manifest = Manifest(
        kind=output.kind,
        settings=output.settings,
        shards=[report.entry for report in reports],
        skipped=[note for report in reports for note in report.failed],
        complete=len(reports) == len(names),
    )
    write_manifest(output.folder, manifest)
    return manifest


def write_outputs(
    outputs: Sequence[Output],
    shard: str,
    rows: Iterable[Sequence[Rows]],
    row_group_bytes: int,
    image_sha256: str,
    raw_sha256: str | None = None,
) -> list[ShardReport]:
    """Write shard `shard` of every output atomically from each image's rows (one per output, in order), then the reports."""
    failed: list[list[RecordNote]] = [[] for _ in outputs]
    with ExitStack() as stack:
        writers = [stack.enter_context(ShardWriter(output.folder / shard, output.schema, row_group_bytes)) for output in outputs]
        for image_rows in rows:
            for writer, (row, note), notes in zip(writers, image_rows, failed):
                writer.write(row)
                if note is not None:
                    notes.append(note)
    reports = []
    for output, writer, notes in zip(outputs, writers, failed):
        entry = replace(shard_entry(writer.path, writer.rows_written), image_sha256=image_sha256)
        report = ShardReport(entry, notes, output.settings_hash, raw_sha256)
        path = report_path(output.folder, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, {key: value for key, value in asdict(report).items() if value is not None})
        reports.append(report)
    return reports
