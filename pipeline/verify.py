"""`segpic verify`: check a shard directory (and its mask and raw-mask shards) end to end.

Checks, collecting every problem rather than stopping at the first: the shard set is
complete; the manifest lists exactly these files with matching row counts, sizes and
sha256, and its counts, settings hash and skip list agree with the shards (skipped
images are absent, fixed ones present; a mask set's failures are exactly its failure
marker rows, and each mask shard was made from the image shard beside it); each file
is readable Parquet with the expected schema and metadata; ids are unique; every row decodes (images to their recorded width and height; label maps to the
image's size with values below `num_regions`; raw masks to the image's size with their
stored area and box, `pipeline.raw_checks`); and mask and raw shards align with the image
shards (same file names, same ids in the same order).
"""

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.manifest import MANIFEST_NAME, Manifest, read_manifest, settings_hash, shard_entry
from pipeline.raw_checks import raw_row_problem
from pipeline.shards import (
    IMAGE_KIND,
    MASK_KIND,
    RAW_KIND,
    SCHEMAS,
    is_failure_marker,
    missing_shards,
    open_parquet,
    read_row_group,
    shard_files,
    shard_kind,
)

MAX_ROW_PROBLEMS_PER_SHARD = 10


@dataclass(frozen=True)
class VerifyConfig:
    """An image shard directory and, optionally, its mask and raw-mask shard directories."""

    images: Path
    masks: Path | None = None
    raw: Path | None = None


@dataclass
class VerifyReport:
    """What was checked and every problem found; `ok` when there is none."""

    shards: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# Per shard file name: the (id, width, height) of each image row, in order.
ImageRows = dict[str, list[tuple[str, int, int]]]


def _check_files(directory: Path, kind: str, report: VerifyReport) -> tuple[list[Path], Manifest | None]:
    """Shard set completeness and manifest agreement; returns the files to read and the manifest."""
    try:
        files = shard_files(directory)
        report.problems += [f"{directory}: missing shard {name}" for name in missing_shards(directory)]
    except (FileNotFoundError, ValueError) as error:
        report.problems.append(str(error))
        return [], None
    if not files:
        report.problems.append(f"{directory}: no shard files")
    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ValueError) as error:
        report.problems.append(str(error))
        return files, None
    _check_manifest_counts(directory, manifest, report)
    if manifest.kind != kind:
        report.problems.append(f"{directory}/manifest.json: kind {manifest.kind!r}, expected {kind!r}")
    if not manifest.complete:
        report.problems.append(f"{directory}/manifest.json: marked incomplete")
    listed = {entry.name: entry for entry in manifest.shards}
    for name in sorted(set(listed) - {path.name for path in files}):
        report.problems.append(f"{directory}: manifest lists {name}, which is missing")
    for path in files:
        entry = listed.get(path.name)
        if entry is None:
            report.problems.append(f"{path}: not listed in the manifest")
        elif shard_entry(path, entry.rows) != replace(entry, image_sha256=None):
            report.problems.append(f"{path}: size or sha256 differs from the manifest (file damaged or replaced)")
    return files, manifest


def _check_manifest_counts(directory: Path, manifest: Manifest, report: VerifyReport) -> None:
    """The manifest's summary fields (counts, settings hash) must agree with the lists they summarise."""
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    expected = {"shards": len(manifest.shards), "rows": manifest.rows, "skipped": len(manifest.skipped), "fixed": len(manifest.fixed)}
    for key, value in expected.items():
        if data.get("counts", {}).get(key) != value:
            report.problems.append(f"{path}: counts.{key} is {data.get('counts', {}).get(key)}, its lists give {value}")
    if data.get("settings_hash") != settings_hash(manifest.settings):
        report.problems.append(f"{path}: settings_hash {data.get('settings_hash')} does not match its settings")


def _check_skip_list(directory: Path, manifest: Manifest, ids: set[str], failed: set[str], report: VerifyReport) -> None:
    """Skipped images must be absent from image shards, fixed ones present; mask failures are exactly the marker rows."""
    where = directory / MANIFEST_NAME
    skipped = [note.id for note in manifest.skipped]
    if len(set(skipped)) != len(skipped):
        report.problems.append(f"{where}: the skip list names an id twice")
    if manifest.kind == IMAGE_KIND:
        for record in sorted(set(skipped) & ids)[:MAX_ROW_PROBLEMS_PER_SHARD]:
            report.problems.append(f"{where}: {record!r} is listed as skipped but is in the shards")
        for record in sorted({note.id for note in manifest.fixed} - ids)[:MAX_ROW_PROBLEMS_PER_SHARD]:
            report.problems.append(f"{where}: {record!r} is listed as fixed but is not in the shards")
        return
    for record in sorted(set(skipped) ^ failed)[:MAX_ROW_PROBLEMS_PER_SHARD]:
        state = "listed as failed but its row is not a failure marker" if record in skipped else "a failure marker row not listed as failed"
        report.problems.append(f"{where}: {record!r} is {state}")


def _check_made_from(masks: Path, mask_manifest: Manifest, image_manifest: Manifest, report: VerifyReport) -> None:
    """Each mask shard's recorded image checksum must be that of the image shard of the same name."""
    images = {entry.name: entry.sha256 for entry in image_manifest.shards}
    for entry in mask_manifest.shards:
        if entry.image_sha256 is not None and entry.name in images and entry.image_sha256 != images[entry.name]:
            report.problems.append(f"{masks / entry.name}: made from another image shard than {entry.name} (sha256 differs)")


def _check_schema(path: Path, kind: str, report: VerifyReport) -> pq.ParquetFile | None:
    try:
        parquet = open_parquet(path)
        found = shard_kind(path)
    except ValueError as error:
        report.problems.append(str(error))
        return None
    except Exception as error:  # pyarrow raises several unrelated types for damaged files
        report.problems.append(f"{path}: unreadable Parquet ({error})")
        return None
    expected = SCHEMAS[kind]
    if found != kind or not parquet.schema_arrow.remove_metadata().equals(expected.remove_metadata()):
        report.problems.append(f"{path}: schema differs from the {kind} shard schema")
        return None
    if b"huggingface" not in parquet.schema_arrow.metadata:
        report.problems.append(f"{path}: lacks the huggingface schema metadata")
    return parquet


def _decode(data: bytes | None) -> Image.Image:
    if data is None:
        raise ValueError("no bytes")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _rows(parquet: pq.ParquetFile, path: Path, report: VerifyReport) -> list[dict]:
    """Rows of one shard, read group by group so one damaged group does not hide the others."""
    rows = []
    for group in range(parquet.num_row_groups):
        try:
            rows += read_row_group(path, parquet, group).to_pylist()
        except ValueError as error:
            report.problems.append(str(error))
    return rows


def _image_problem(row: dict) -> str | None:
    try:
        image = _decode(row["image"]["bytes"])
    except Exception as error:  # PIL raises many types for damaged data
        return f"image does not decode ({error})"
    if image.size != (row["width"], row["height"]):
        return f"decodes to {image.size[0]}x{image.size[1]}, recorded {row['width']}x{row['height']}"
    return None


def _mask_problem(row: dict, size: tuple[int, int] | None) -> str | None:
    try:
        mask = _decode(row["mask"]["bytes"])
    except Exception as error:  # PIL raises many types for damaged data
        return f"label map does not decode ({error})"
    if size is not None and mask.size != size:
        return f"label map is {mask.size[0]}x{mask.size[1]}, its image {size[0]}x{size[1]}"
    highest = int(np.asarray(mask).max())
    if is_failure_marker(row["num_regions"]):
        return None if highest == 0 else f"failure marker (num_regions 0) holds labels up to {highest}"
    if highest >= row["num_regions"]:
        return f"label values reach {highest}, num_regions is {row['num_regions']}"
    return None


ROW_PROBLEMS = {
    IMAGE_KIND: lambda row, size: _image_problem(row),
    MASK_KIND: _mask_problem,
    RAW_KIND: raw_row_problem,
}


def _check_directory(
    directory: Path, kind: str, images: ImageRows | None, report: VerifyReport
) -> tuple[ImageRows, Manifest | None]:
    """Check one directory; for masks, `images` gives the rows they must align with."""
    seen: set[str] = set()
    failed: set[str] = set()
    collected: ImageRows = {}
    files, manifest = _check_files(directory, kind, report)
    listed = {entry.name: entry for entry in manifest.shards} if manifest is not None else {}
    for path in files:
        parquet = _check_schema(path, kind, report)
        if parquet is None:
            continue
        rows = _rows(parquet, path, report)
        if path.name in listed and listed[path.name].rows != len(rows):
            report.problems.append(f"{path}: {len(rows)} rows, the manifest says {listed[path.name].rows}")
        report.shards += 1
        report.rows += len(rows)
        collected[path.name] = [(row["id"], row.get("width"), row.get("height")) for row in rows]
        expected = images.get(path.name) if images is not None else None
        if images is not None and expected is None:
            report.problems.append(f"{path}: no image shard of that name")
        elif expected is not None and [row["id"] for row in rows] != [entry[0] for entry in expected]:
            report.problems.append(f"{path}: ids or their order differ from the image shard")
            expected = None
        row_problems = []
        for position, row in enumerate(rows):
            if row["id"] in seen:
                row_problems.append(f"{path}: duplicate id {row['id']!r}")
            seen.add(row["id"])
            if (kind == MASK_KIND and is_failure_marker(row["num_regions"])) or (kind == RAW_KIND and row["failure"] is not None):
                failed.add(row["id"])
            size = (expected[position][1], expected[position][2]) if expected is not None else None
            problem = ROW_PROBLEMS[kind](row, size)
            if problem:
                row_problems.append(f"{path}: record {row['id']!r}: {problem}")
        report.problems += row_problems[:MAX_ROW_PROBLEMS_PER_SHARD]
        if len(row_problems) > MAX_ROW_PROBLEMS_PER_SHARD:
            report.problems.append(f"{path}: {len(row_problems) - MAX_ROW_PROBLEMS_PER_SHARD} more bad records")
    if manifest is not None:
        _check_skip_list(directory, manifest, seen, failed, report)
    return collected, manifest


def verify(config: VerifyConfig) -> VerifyReport:
    """Check the image shards and, when given, the mask and raw-mask shards against them."""
    report = VerifyReport()
    images, image_manifest = _check_directory(Path(config.images), IMAGE_KIND, None, report)
    for folder, kind in ((config.masks, MASK_KIND), (config.raw, RAW_KIND)):
        if folder is None:
            continue
        shards, manifest = _check_directory(Path(folder), kind, images, report)
        if image_manifest is not None and manifest is not None:
            _check_made_from(Path(folder), manifest, image_manifest, report)
        for name in sorted(set(images) - set(shards)):
            if not any(name in problem for problem in report.problems):
                report.problems.append(f"{folder}: no {kind} shard for image shard {name}")
    return report
