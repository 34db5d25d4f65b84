"""The shard format: Parquet files of images and of their label maps, defined once here.

An image shard directory holds `part-00000-of-000NN.parquet` files plus `manifest.json`.
Image shards have columns `id`, `image`, `width`, `height`; mask shards, written by the
masks stage with the same file names and row order, have `id`, `mask` and per-image
statistics; raw mask shards, aligned the same way, have `id`, the image's `width` and
`height`, and `masks`, the generator's masks before the label-map rule as COCO annotations
(`pipeline.raw_mask_format`), or a `failure` reason. Encoded pictures live in the Hugging Face `Image` struct (`bytes`, `path`)
and every schema carries the `huggingface` metadata, so `datasets.load_dataset("parquet")`
decodes the columns without any code of ours. A `segpic` metadata entry records the
kind of shard and `FORMAT_VERSION` (mask shards also the version of their label-map
PNGs, `pipeline.label_map_format`; raw shards that of their masks), so readers can refuse
files they do not understand.

Files are written under `<name>.incomplete` and renamed into place when closed, so a
killed writer never leaves a file that looks finished.
"""

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic_files import INCOMPLETE_SUFFIX
from pipeline.label_map_format import LABEL_MAP_FORMAT_VERSION

FORMAT_VERSION = 1
IMAGE_KIND = "images"
MASK_KIND = "masks"
RAW_KIND = "raw-masks"
RAW_MASK_FORMAT_VERSION = 1
"""Version of how raw masks are encoded (`pipeline.raw_mask_format`): 1, COCO compressed RLE per mask. Kept here,
not there, so that the stages that only read images and label maps do not load the RLE codec."""
SHARD_PATTERN = re.compile(r"^part-(\d{5})-of-(\d{5})\.parquet$")

# The Hub's conventions: about 500 MB per file, about 100 MB per row group.
DEFAULT_SHARD_BYTES = 500 * 1024 * 1024
DEFAULT_ROW_GROUP_BYTES = 100 * 1024 * 1024

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_HF_VALUE_TYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32"}


def _hf_feature(dtype: pa.DataType) -> dict[str, Any]:
    """The Hugging Face feature description of a column type (pictures, values, lists and structs of them)."""
    if dtype == IMAGE_STRUCT:
        return {"_type": "Image"}
    if pa.types.is_list(dtype):
        return {"feature": _hf_feature(dtype.value_type), "_type": "List"}
    if pa.types.is_struct(dtype):
        return {field.name: _hf_feature(field.type) for field in dtype}
    return {"dtype": _HF_VALUE_TYPES[dtype], "_type": "Value"}


def _schema(kind: str, fields: Sequence[tuple[str, pa.DataType]], **versions: int) -> pa.Schema:
    """Attach the Hugging Face feature description and our own format tag (with `versions`) to `fields`."""
    features = {name: _hf_feature(dtype) for name, dtype in fields}
    metadata = {
        b"huggingface": json.dumps({"info": {"features": features}}).encode(),
        b"segpic": json.dumps({"kind": kind, "format_version": FORMAT_VERSION, **versions}).encode(),
    }
    return pa.schema(list(fields), metadata=metadata)


IMAGE_SCHEMA = _schema(
    IMAGE_KIND,
    [("id", pa.string()), ("image", IMAGE_STRUCT), ("width", pa.int32()), ("height", pa.int32())],
)
MASK_SCHEMA = _schema(
    MASK_KIND,
    [
        ("id", pa.string()),
        ("mask", IMAGE_STRUCT),
        ("num_regions", pa.int32()),
        ("coverage", pa.float32()),
        ("mean_iou", pa.float32()),
        ("generator", pa.string()),
        ("settings_hash", pa.string()),
    ],
    label_map_format_version=LABEL_MAP_FORMAT_VERSION,
)
RAW_MASK_STRUCT = pa.struct(
    [
        ("segmentation", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
        ("bbox", pa.list_(pa.int32())),
        ("area", pa.int64()),
        ("predicted_iou", pa.float32()),
        ("stability_score", pa.float32()),
        ("prompt", pa.string()),
        ("score", pa.float32()),
    ]
)
RAW_SCHEMA = _schema(
    RAW_KIND,
    [
        ("id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("masks", pa.list_(RAW_MASK_STRUCT)),
        ("failure", pa.string()),
        ("generator", pa.string()),
        ("settings_hash", pa.string()),
    ],
    raw_mask_format_version=RAW_MASK_FORMAT_VERSION,
)
SCHEMAS = {IMAGE_KIND: IMAGE_SCHEMA, MASK_KIND: MASK_SCHEMA, RAW_KIND: RAW_SCHEMA}

# A mask row with `num_regions` FAILED_NUM_REGIONS marks an image the masks stage could not
# label: its label map is all zero, and statistics and training leave it out.
FAILED_NUM_REGIONS = 0


def is_failure_marker(num_regions: int) -> bool:
    """Whether a mask row's `num_regions` marks an image the masks stage could not label."""
    return num_regions == FAILED_NUM_REGIONS


def shard_name(index: int, count: int) -> str:
    """`part-00002-of-00010.parquet`: the Hub's name, which says its place and the total."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    return f"part-{index:05d}-of-{count:05d}.parquet"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(index, count) of a shard file name, or None when `name` is not one."""
    match = SHARD_PATTERN.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def shard_files(directory: Path) -> list[Path]:
    """Every finished file named like a shard, sorted, whether or not the set is complete."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such shard directory")
    return sorted(path for path in directory.iterdir() if parse_shard_name(path.name))


def missing_shards(directory: Path) -> list[str]:
    """Names a complete shard set in `directory` still lacks (their totals must agree)."""
    files = shard_files(directory)
    counts = {parse_shard_name(path.name)[1] for path in files}
    if len(counts) > 1:
        raise ValueError(f"{directory}: shard names disagree on the total ({sorted(counts)})")
    if not counts:
        return []
    count = counts.pop()
    present = {path.name for path in files}
    return [shard_name(index, count) for index in range(count) if shard_name(index, count) not in present]


def list_shards(directory: Path) -> list[Path]:
    """The shards of a complete set, in order; raises when the set is empty or has gaps."""
    files = shard_files(directory)
    if not files:
        if any(not path.name.startswith(".") for path in Path(directory).iterdir()):
            raise ValueError(
                f"{directory}: no shard files (part-NNNNN-of-NNNNN.parquet); for a folder of image files run "
                f"`segpic ingest {directory} --out SHARDS` first and give SHARDS"
            )
        raise ValueError(f"{directory}: no shard files (part-NNNNN-of-NNNNN.parquet)")
    missing = missing_shards(directory)
    if missing:
        raise ValueError(f"{directory}: incomplete shard set, missing {', '.join(missing)}")
    return files


def shard_kind(path: Path) -> str:
    """`images`, `masks` or `raw-masks`, read from the file's `segpic` metadata; raises on foreign files."""
    metadata = open_parquet(path).schema_arrow.metadata or {}
    if b"segpic" not in metadata:
        raise ValueError(f"{path}: not a segpic shard (no segpic schema metadata)")
    tag = json.loads(metadata[b"segpic"])
    known = SCHEMAS.get(tag.get("kind"))
    if known is None or tag != json.loads(known.metadata[b"segpic"]):
        raise ValueError(f"{path}: unsupported shard format {tag}, this build reads version {FORMAT_VERSION}")
    return tag["kind"]


def open_parquet(path: Path, memory_map: bool = False) -> pq.ParquetFile:
    """Open a Parquet file; a damaged or foreign file raises ValueError naming it (pyarrow raises assorted types)."""
    try:
        return pq.ParquetFile(path, memory_map=memory_map)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from error


def read_row_group(path: Path, parquet: pq.ParquetFile, group: int, columns: Sequence[str] | None = None) -> pa.Table:
    """Row group `group` of the open shard `path`; a damaged group raises ValueError naming both."""
    try:
        return parquet.read_row_group(group, columns=list(columns) if columns else None)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: row group {group} cannot be read ({error})") from error


def read_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one shard as dicts, one row group in memory at a time; a damaged file raises ValueError naming it."""
    parquet = open_parquet(path)
    if columns is not None and set(columns) - set(parquet.schema_arrow.names):
        missing = sorted(set(columns) - set(parquet.schema_arrow.names))
        raise ValueError(f"{path}: lacks columns {missing} (is it the right kind of shard?)")
    for group in range(parquet.num_row_groups):
        yield from read_row_group(path, parquet, group, columns).to_pylist()


def _row_bytes(row: dict[str, Any]) -> int:
    """Approximate encoded size of a row: its binary payloads (pictures, a list's RLE strings) dominate everything else."""
    return sum(
        len(value["bytes"] or b"") if isinstance(value, dict) else _nested_bytes(value) if isinstance(value, list) else 64
        for value in row.values()
    )


def _nested_bytes(value: Any) -> int:
    """Size of a list column's content: its strings' lengths, 8 bytes for every other value."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_nested_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(_nested_bytes(item) for item in value)
    return 8


def _column_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet writer options: picture bytes stored as they are, other columns snappy with dictionaries.

    PNG and JPEG bytes are already compressed; compressing them again, or trying to
    dictionary-encode them, gains nothing and costs time on every training read.
    """
    leaves = []
    for field in schema:
        if pa.types.is_struct(field.type):
            leaves += [(f"{field.name}.{child.name}", field.type == IMAGE_STRUCT and child.name == "bytes")
                       for child in field.type]
        else:
            leaves.append((field.name, False))
    return {
        "compression": {path: "NONE" if is_payload else "SNAPPY" for path, is_payload in leaves},
        "use_dictionary": [path for path, is_payload in leaves if not is_payload],
    }


class ShardWriter:
    """Write one shard file atomically: rows go to `<path>.incomplete`, renamed on success.

    Unlike `pipeline.atomic_files`, the partial file has a fixed name: shards are written by
    one process at a time (the output folder's lock), and a run resumed after a kill
    overwrites what the killed one left instead of accumulating partial files.

    Use as a context manager: leaving the block normally closes the file and moves it into
    place; leaving it through an exception deletes the partial file. Rows are buffered into
    row groups of about `row_group_bytes` (their encoded payload size).
    """

    def __init__(self, path: Path, schema: pa.Schema, row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES) -> None:
        if row_group_bytes <= 0:
            raise ValueError(f"row_group_bytes must be positive, got {row_group_bytes}")
        self.path = Path(path)
        self.schema = schema
        self.row_group_bytes = row_group_bytes
        self.rows_written = 0
        self.bytes_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None

    @property
    def incomplete_path(self) -> Path:
        return self.path.with_name(self.path.name + INCOMPLETE_SUFFIX)

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.incomplete_path, self.schema, **_column_options(self.schema))
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Add one row (a dict with every schema column); flushes a row group when full."""
        missing = set(self.schema.names) - set(row)
        if missing:
            raise ValueError(f"{self.path}: row {row.get('id')!r} lacks columns {sorted(missing)}")
        size = _row_bytes(row)
        self._buffer.append(row)
        self._buffered_bytes += size
        self.bytes_written += size
        self.rows_written += 1
        if self._buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
            self._writer.write_table(table, row_group_size=len(self._buffer))
            self._buffer, self._buffered_bytes = [], 0

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self._flush()
            self._writer.close()
        except BaseException:
            self.incomplete_path.unlink(missing_ok=True)
            raise
        if kind is None:
            self.incomplete_path.replace(self.path)
        else:
            self.incomplete_path.unlink(missing_ok=True)
