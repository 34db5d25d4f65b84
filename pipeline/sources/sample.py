"""`sample` and `sample-eval`: the offline photographs shipped with installed packages."""

from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.sample import evaluation_photo_paths, sample_photo_paths
from pipeline.sources.base import ImageSource, SourceRecord

SAMPLE_SPEC = "sample"
SAMPLE_SETS: dict[str, Callable[[], list[Path]]] = {
    SAMPLE_SPEC: sample_photo_paths,
    "sample-eval": evaluation_photo_paths,
}


class SampleSource(ImageSource):
    """The photos of one offline set in their fixed order; id = file name."""

    @staticmethod
    def accepts(spec: str) -> bool:
        return spec in SAMPLE_SETS

    def __init__(self, spec: str) -> None:
        self.paths = SAMPLE_SETS[spec]()

    def records(self) -> Iterator[SourceRecord]:
        for path in self.paths:
            yield SourceRecord(id=path.name, name=path.name, read=path.read_bytes)

    def count(self) -> int:
        return len(self.paths)
