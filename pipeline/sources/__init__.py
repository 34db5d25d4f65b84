"""Image sources for `segpic ingest`: one registry of small classes, tried in order."""

from pathlib import Path

from pipeline.sources.base import ImageSource, SourceRecord
from pipeline.sources.folder import FolderSource
from pipeline.sources.huggingface import HuggingFaceSource
from pipeline.sources.parquet import ParquetSource
from pipeline.sources.sample import SampleSource

# Order matters: `sample`, `sample-eval` and `hf:` are exact names or prefixes, and a folder holding Parquet
# files is read as Parquet rather than as a folder of (no) images.
SOURCES: tuple[type[ImageSource], ...] = (SampleSource, HuggingFaceSource, ParquetSource, FolderSource)


def open_source(spec: str) -> ImageSource:
    """The source SPEC names; raises ValueError listing the accepted forms when none fits."""
    for kind in SOURCES:
        if kind.accepts(spec):
            return kind(spec)
    forms = "`sample`, `sample-eval`, `hf:NAME[:SPLIT]`, a Parquet file/folder or an image folder"
    if not Path(spec).exists():
        raise FileNotFoundError(f"{spec}: no such file or folder (a source is {forms})")
    raise ValueError(f"{spec}: not a source (expected {forms})")


def canonical_spec(spec: str) -> str:
    """SPEC with a local path made absolute and normalised, so `photos`, `./photos/` and `/data/photos` compare equal."""
    prefix = next((prefix for prefix in ("parquet:", "hf:") if spec.startswith(prefix)), "")
    path = Path(spec.removeprefix(prefix))
    return prefix + str(path.resolve()) if path.exists() else spec


__all__ = [
    "SOURCES",
    "FolderSource",
    "HuggingFaceSource",
    "ImageSource",
    "ParquetSource",
    "SampleSource",
    "SourceRecord",
    "canonical_spec",
    "open_source",
]
