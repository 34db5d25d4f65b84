"""`manifest.json`: what a shard directory holds and how it was made, written atomically.

Shared by the stages that write shards (ingest, masks). It lists every shard with its row
count, size and sha256 (so `segpic verify` can catch a damaged file), the records that
were skipped or fixed with their reasons, the settings and their hash, the versions of
the libraries that shaped the bytes. It holds nothing that differs between two runs with
the same inputs and settings (no timings: commands write those to a separate file, see
`--timings`), so a shard directory's bytes, and a DVC stage's output hash, are reproducible.
"""

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipeline.atomic_files import write_json_atomically

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "segpic-shards"
MANIFEST_VERSION = 2
"""Version of the manifest's own layout (the shard files carry theirs, `pipeline.shards.FORMAT_VERSION`).
2: no `timings`."""
VERSIONED_PACKAGES = ("segpic", "pillow", "pyarrow", "datasets", "numpy", "segment-anything", "torch", "scikit-image")
HASH_CHUNK_BYTES = 1 << 20
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class ShardEntry:
    """One finished shard as the manifest lists it; a mask shard also names its image shard's sha256."""

    name: str
    rows: int
    bytes: int
    sha256: str
    image_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class RecordNote:
    """A record that was skipped (`reason`, with the error's `detail`) or fixed (`reason` names the fixes)."""

    id: str
    reason: str
    detail: str = ""


def reproducible(message: str) -> str:
    """`message` without object memory addresses (`<BytesIO object at 0x7f..>`), so reruns record identical notes."""
    return MEMORY_ADDRESS.sub("", message)


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` holds; `complete` is False while a job array is still writing shards."""

    kind: str
    settings: dict[str, Any]
    shards: list[ShardEntry]
    skipped: list[RecordNote] = field(default_factory=list)
    fixed: list[RecordNote] = field(default_factory=list)
    complete: bool = True
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "kind": self.kind,
            "complete": self.complete,
            "counts": {
                "shards": len(self.shards),
                "rows": self.rows,
                "skipped": len(self.skipped),
                "fixed": len(self.fixed),
            },
            "settings": self.settings,
            "settings_hash": settings_hash(self.settings),
            "versions": self.versions or package_versions(),
            "shards": [shard.to_json() for shard in self.shards],
            "skipped": [asdict(note) for note in self.skipped],
            "fixed": [asdict(note) for note in self.fixed],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> "Manifest":
        if data.get("format") != MANIFEST_FORMAT or data.get("format_version") != MANIFEST_VERSION:
            raise ValueError(
                f"{where}: not a segpic shard manifest of format version {MANIFEST_VERSION} "
                f"(found {data.get('format')!r} version {data.get('format_version')!r}); re-run the command into a new --out"
            )
        try:
            return cls(
                kind=data["kind"],
                settings=data["settings"],
                shards=[ShardEntry(**shard) for shard in data["shards"]],
                skipped=[RecordNote(**note) for note in data["skipped"]],
                fixed=[RecordNote(**note) for note in data["fixed"]],
                complete=data["complete"],
                versions=data["versions"],
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{where}: malformed manifest ({error!r})") from error


def settings_hash(settings: dict[str, Any]) -> str:
    """Short stable digest of a settings dict: equal settings, equal hash, across runs and machines."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries whose behaviour decides the shards' bytes."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def shard_entry(path: Path, rows: int) -> ShardEntry:
    """Describe a finished shard file for the manifest."""
    return ShardEntry(name=path.name, rows=rows, bytes=path.stat().st_size, sha256=file_sha256(path))


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write `directory/manifest.json` atomically and return its path."""
    path = Path(directory) / MANIFEST_NAME
    write_json_atomically(path, manifest.to_json())
    return path


def read_manifest(directory: Path) -> Manifest:
    """Read `directory/manifest.json`; raises FileNotFoundError/ValueError naming the file."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    return Manifest.from_json(data, path)
