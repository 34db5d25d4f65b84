"""A finished raw-mask set as its readers take it (`segpic repaint`, `segpic export-masks`).

A raw set is read only when it is complete and its manifest lists exactly its files; the
shards a command is about to read are checked against the manifest's sha256 first, so a
damaged or truncated shard stops the command with one line before it writes anything.
"""

from pathlib import Path
from typing import Any

from pipeline.manifest import MANIFEST_NAME, Manifest, ShardEntry, file_sha256
from pipeline.raw_mask_format import RawMasks
from pipeline.shard_outputs import Outcome
from pipeline.shard_sets import read_complete_set
from pipeline.shards import RAW_KIND


def read_raw_set(raw: Path) -> tuple[Manifest, dict[str, ShardEntry]]:
    """The raw set's manifest and its shard entries by name, refusing anything but a complete raw-mask set."""
    return read_complete_set(raw, RAW_KIND, "`segpic masks --raw`")


def check_checksums(raw: Path, entries: list[ShardEntry]) -> None:
    """Refuse raw shards whose bytes are not the ones the manifest lists (damaged, truncated or replaced)."""
    for entry in entries:
        path = raw / entry.name
        if path.stat().st_size != entry.bytes or file_sha256(path) != entry.sha256:
            raise ValueError(f"{path}: size or sha256 differs from {raw / MANIFEST_NAME} (damaged or replaced); run `segpic verify`")


def raw_outcome(row: dict[str, Any], where: Path) -> Outcome:
    """A raw shard row (of `where`) back as the outcome it was written from."""
    if row["failure"] is not None:
        return row["failure"]
    return RawMasks.from_rows(row["height"], row["width"], row["masks"], f"{where}: record {row['id']!r}")
