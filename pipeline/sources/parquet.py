"""Existing Parquet files holding encoded images (our shards, or a Hub dataset's files).

The image column is the first struct column with a `bytes` field (an `Image` feature),
preferring one named `image`. Ids come from an `id` string column when there is one,
else `<file relative to the spec>:<row>`. A row with a `path` but no `bytes` (what
`datasets` writes for images stored beside the file) is read from that path: relative to
the Parquet file's folder when a file is there, else as given. Hidden files and folders
(names starting with `.`) are skipped.
"""

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa

from pipeline.shards import open_parquet, read_row_group
from pipeline.sources.base import ImageSource, SourceRecord, is_hidden

PREFIX = "parquet:"


def _image_column(schema: pa.Schema, path: Path) -> str:
    candidates = [
        field.name
        for field in schema
        if pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0
    ]
    if not candidates:
        raise ValueError(f"{path}: no image column (a struct with a `bytes` field)")
    return "image" if "image" in candidates else candidates[0]


class ParquetSource(ImageSource):
    """`parquet:PATH`, or a `.parquet` file, or a folder whose files include `*.parquet` (read recursively)."""

    @staticmethod
    def accepts(spec: str) -> bool:
        path = Path(spec.removeprefix(PREFIX))
        if spec.startswith(PREFIX) or path.suffix == ".parquet":
            return True
        return path.is_dir() and any(not is_hidden(found.relative_to(path)) for found in path.rglob("*.parquet"))

    def __init__(self, spec: str) -> None:
        self.root = Path(spec.removeprefix(PREFIX))
        if self.root.is_file():
            self.files, self.base = [self.root], self.root.parent
        elif self.root.is_dir():
            found = (path for path in self.root.rglob("*.parquet") if not is_hidden(path.relative_to(self.root)))
            self.files, self.base = sorted(found), self.root
        else:
            raise FileNotFoundError(f"{self.root}: no such Parquet file or folder")
        if not self.files:
            raise ValueError(f"{self.root}: no .parquet files")

    def count(self) -> int:
        return sum(open_parquet(path).metadata.num_rows for path in self.files)

    def local_root(self) -> Path | None:
        return self.root if self.root.is_dir() else None

    def records(self) -> Iterator[SourceRecord]:
        for path in self.files:
            parquet = open_parquet(path)
            column = _image_column(parquet.schema_arrow, path)
            has_ids = "id" in parquet.schema_arrow.names
            relative = path.relative_to(self.base).as_posix()
            row = 0
            for group in range(parquet.num_row_groups):
                table = read_row_group(path, parquet, group, [column, "id"] if has_ids else [column])
                ids = table.column("id").to_pylist() if has_ids else None
                for offset, value in enumerate(table.column(column).to_pylist()):
                    record_id = ids[offset] if has_ids else f"{relative}:{row}"
                    yield _record(record_id, value, path)
                    row += 1


def _record(record_id: str, value: dict | None, path: Path) -> SourceRecord:
    data = (value or {}).get("bytes")
    name = (value or {}).get("path")
    return SourceRecord(id=record_id, name=name, read=partial(_bytes_of, data, name, path, f"{path} row {record_id}"))


def _bytes_of(data: bytes | None, name: str | None, parquet: Path, where: str) -> bytes:
    """The row's bytes, else the file its `path` names (beside the Parquet file first, then as given)."""
    if data is not None:
        return data
    if not name:
        raise ValueError(f"{where}: the image struct holds neither bytes nor a path")
    beside = parquet.parent / name
    target = beside if beside.is_file() else Path(name)
    if not target.is_file():
        raise ValueError(f"{where}: no image bytes, and its path {name} is not a file (looked beside {parquet} too)")
    return target.read_bytes()
