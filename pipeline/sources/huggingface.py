"""`hf:NAME[:SPLIT]`: a Hugging Face dataset read through `datasets`, streamed.

NAME is whatever `datasets.load_dataset` accepts (a Hub name, or a local folder of data
files); the split defaults to `train`. Images are read undecoded (`Image(decode=False)`)
so the original encoded bytes reach the shard. Id = index of the row in the split.
"""

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from pipeline.sources.base import ImageSource, SourceRecord

PREFIX = "hf:"
DEFAULT_SPLIT = "train"


def parse_spec(spec: str) -> tuple[str, str]:
    """`hf:user/name:split` -> (`user/name`, `split`); a trailing part with a `/` is a path, not a split."""
    body = spec.removeprefix(PREFIX)
    name, _, split = body.rpartition(":")
    if not name or "/" in split:
        name, split = body, DEFAULT_SPLIT
    if not name:
        raise ValueError(f"{spec}: expected hf:NAME[:SPLIT]")
    return name, split


class HuggingFaceSource(ImageSource):
    """A split of a `datasets` dataset, streamed; the first `Image` column is the image."""

    @staticmethod
    def accepts(spec: str) -> bool:
        return spec.startswith(PREFIX)

    def __init__(self, spec: str) -> None:
        import datasets

        self.name, self.split = parse_spec(spec)
        stream = datasets.load_dataset(self.name, split=self.split, streaming=True)
        columns = [key for key, feature in (stream.features or {}).items() if isinstance(feature, datasets.Image)]
        if not columns:
            raise ValueError(f"{spec}: the dataset has no Image column")
        self.column = columns[0]
        self.stream = stream.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))

    def local_root(self) -> Path | None:
        return Path(self.name) if Path(self.name).is_dir() else None

    def records(self) -> Iterator[SourceRecord]:
        for index, row in enumerate(self.stream):
            value = row[self.column]
            yield SourceRecord(id=str(index), name=value.get("path"), read=partial(_bytes_of, value, index, self.name))


def _bytes_of(value: dict, index: int, name: str) -> bytes:
    if value.get("bytes") is not None:
        return value["bytes"]
    if value.get("path"):
        with open(value["path"], "rb") as file:
            return file.read()
    raise ValueError(f"hf:{name} row {index}: the image has neither bytes nor a path")
