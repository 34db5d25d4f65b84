"""`sample`: the offline photographs shipped with scikit-image."""

from collections.abc import Iterator

from pipeline.sample import sample_photo_paths
from pipeline.sources.base import ImageSource, SourceRecord

SAMPLE_SPEC = "sample"


class SampleSource(ImageSource):
    """The sample photos in their fixed order; id = file name."""

    @staticmethod
    def accepts(spec: str) -> bool:
        return spec == SAMPLE_SPEC

    def __init__(self, spec: str) -> None:
        self.paths = sample_photo_paths()

    def records(self) -> Iterator[SourceRecord]:
        for path in self.paths:
            yield SourceRecord(id=path.name, name=path.name, read=path.read_bytes)

    def count(self) -> int:
        return len(self.paths)
