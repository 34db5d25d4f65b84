"""A local folder of image files, searched recursively (ImageNet `nXXXXXXXX/*.JPEG` or flat Flickr-style).

Hidden files and folders (names starting with `.`) are not images of the set and are skipped.
"""

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from pipeline.sources.base import ImageSource, SourceRecord, is_hidden

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


class FolderSource(ImageSource):
    """Files with an image suffix (any case) under a folder; id = path relative to it, POSIX style."""

    @staticmethod
    def accepts(spec: str) -> bool:
        return Path(spec).is_dir()

    def __init__(self, spec: str) -> None:
        self.root = Path(spec)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{spec}: no such folder")

    @cached_property
    def relative_paths(self) -> list[str]:
        """Image files under the root, relative and sorted: the ids, in source order."""
        paths = (path for path in self.root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
        relative = (path.relative_to(self.root) for path in paths)
        return sorted(path.as_posix() for path in relative if not is_hidden(path))

    def records(self) -> Iterator[SourceRecord]:
        for relative in self.relative_paths:
            yield SourceRecord(id=relative, name=relative, read=(self.root / relative).read_bytes)

    def count(self) -> int:
        return len(self.relative_paths)

    def local_root(self) -> Path:
        return self.root
