"""The one interface every image source implements."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath


@dataclass(frozen=True)
class SourceRecord:
    """One image of a source: a stable id, a name hint for the `path` field, and its bytes on demand.

    `read` is deferred so a resumed ingest can pass over finished records without reading them.
    """

    id: str
    name: str | None
    read: Callable[[], bytes]


class ImageSource(ABC):
    """A kind of image collection, chosen by its SOURCE spec on the command line.

    Subclasses are constructed from the spec alone and check there that the source exists,
    raising ValueError/FileNotFoundError naming it if not.
    """

    @staticmethod
    @abstractmethod
    def accepts(spec: str) -> bool:
        """Whether `spec` names a source of this kind."""

    @abstractmethod
    def records(self) -> Iterator[SourceRecord]:
        """Every image, always in the same order (resuming and job arrays rely on it)."""

    def count(self) -> int | None:
        """Number of records when known cheaply (for the progress bar's ETA), else None."""
        return None

    def local_root(self) -> Path | None:
        """The local folder the records are read from, if any: an output folder must not lie inside it."""
        return None


def is_hidden(relative: PurePath) -> bool:
    """Whether a path below a source's root is hidden (`.DS_Store`, `._IMG.jpg`, `.ipynb_checkpoints/`, `.git/`)."""
    return any(part.startswith(".") for part in relative.parts)
