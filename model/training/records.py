"""Random access to image shards and their aligned mask shards.

Mask shards align one-to-one with image shards (same file names, same row order, same
`id`); `index_records` checks that once, up front, so a misaligned pair fails with the
file and record named instead of training on the wrong masks. It also marks images the
masks stage could not label (their row holds the failure marker, `num_regions` 0), so
training can leave them out instead of reading their all-zero map as one region. Rows
are then read by (shard, row group, row) from any worker process.
"""

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.shards import IMAGE_KIND, MASK_KIND, is_failure_marker, list_shards, open_parquet, read_row_group, shard_kind

ID_COLUMN = "id"
REGIONS_COLUMN = "num_regions"
IMAGE_COLUMN = "image"
MASK_COLUMN = "mask"
ROW_GROUPS_IN_MEMORY = 4
"""Row groups each reader keeps decoded; the sampler shuffles within windows of this many."""


@dataclass(frozen=True)
class RowRef:
    """One row of one shard, addressed the way Parquet reads it: by row group."""

    shard: Path
    row_group: int
    row: int


@dataclass(frozen=True)
class TrainingRecord:
    """An image and, when training with masks, its label map."""

    id: str
    image: RowRef
    label_map: RowRef | None
    unlabelled: bool = False


def _shard_rows(shard: Path, columns: tuple[str, ...] = (ID_COLUMN,)) -> tuple[dict[str, list], list[tuple[int, int]]]:
    """`columns` of a shard as lists, and the (row group, row) of each row, in file order."""
    parquet = open_parquet(shard)
    values = parquet.read(columns=list(columns)).to_pydict()
    places = [
        (group, row)
        for group in range(parquet.num_row_groups)
        for row in range(parquet.metadata.row_group(group).num_rows)
    ]
    return values, places


def _shard_files(directory: Path, kind: str) -> list[Path]:
    """The complete shard set of `directory`, refusing shards of the other kind (e.g. swapped options)."""
    shards = list_shards(directory)
    for shard in shards:
        if shard_kind(shard) != kind:
            raise ValueError(f"{shard}: expected {kind} shards, found {shard_kind(shard)}")
    return shards


def index_records(images_dir: Path, masks_dir: Path | None = None) -> list[TrainingRecord]:
    """Every record of the image shards, paired with its mask row; raises ValueError on misalignment."""
    image_shards = _shard_files(images_dir, IMAGE_KIND)
    mask_shards = _shard_files(masks_dir, MASK_KIND) if masks_dir is not None else None
    if mask_shards is not None and [s.name for s in mask_shards] != [s.name for s in image_shards]:
        raise ValueError(
            f"mask shards in {masks_dir} do not match the image shards in {images_dir}: "
            f"{[s.name for s in mask_shards]} vs {[s.name for s in image_shards]}"
        )
    records: list[TrainingRecord] = []
    for position, image_shard in enumerate(image_shards):
        image_rows, image_places = _shard_rows(image_shard)
        ids = image_rows[ID_COLUMN]
        mask_refs: list[RowRef | None] = [None] * len(ids)
        region_counts = [None] * len(ids)
        if mask_shards is not None:
            mask_shard = mask_shards[position]
            mask_rows, mask_places = _shard_rows(mask_shard, (ID_COLUMN, REGIONS_COLUMN))
            _check_aligned(image_shard, ids, mask_shard, mask_rows[ID_COLUMN])
            mask_refs = [RowRef(mask_shard, *place) for place in mask_places]
            region_counts = mask_rows[REGIONS_COLUMN]
        records.extend(
            TrainingRecord(
                record_id, RowRef(image_shard, *place), mask_ref, unlabelled=regions is not None and is_failure_marker(regions)
            )
            for record_id, place, mask_ref, regions in zip(ids, image_places, mask_refs, region_counts)
        )
    return records


def _check_aligned(image_shard: Path, ids: list[str], mask_shard: Path, mask_ids: list[str]) -> None:
    if mask_ids == ids:
        return
    row = next((i for i, (a, b) in enumerate(zip(ids, mask_ids)) if a != b), min(len(ids), len(mask_ids)))
    image_id = ids[row] if row < len(ids) else None
    mask_id = mask_ids[row] if row < len(mask_ids) else None
    raise ValueError(
        f"mask shard {mask_shard} is not aligned with image shard {image_shard}: "
        f"row {row} has mask id {mask_id!r} but image id {image_id!r}"
    )


class RowReader:
    """Reads one encoded image (struct column's `bytes`) at a time, keeping a few row groups decoded.

    Each worker process holds its own reader; Parquet's unit of reading is the row group,
    so the last `cache_size` row groups read stay in memory.
    """

    def __init__(self, column: str, cache_size: int = ROW_GROUPS_IN_MEMORY) -> None:
        self.column = column
        self.cache_size = cache_size
        self._groups: OrderedDict[tuple[Path, int], pa.Array] = OrderedDict()

    def read_bytes(self, ref: RowRef) -> bytes:
        key = (ref.shard, ref.row_group)
        group = self._groups.get(key)
        if group is None:
            # Memory-mapped: the page cache serves the read without another copy of the row group.
            table = read_row_group(ref.shard, open_parquet(ref.shard, memory_map=True), ref.row_group, [self.column])
            group = table.column(self.column).combine_chunks().field("bytes")
            self._groups[key] = group
            if len(self._groups) > self.cache_size:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        value = group[ref.row].as_py()
        if value is None:
            raise ValueError(f"{ref.shard} row group {ref.row_group} row {ref.row}: no {self.column} bytes")
        return value

    def __getstate__(self) -> dict:
        # Workers start with an empty cache instead of pickling decoded row groups.
        return {"column": self.column, "cache_size": self.cache_size, "_groups": OrderedDict()}
