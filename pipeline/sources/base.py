"""The one interface every image source implements."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass


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
