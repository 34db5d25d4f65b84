"""`hf:NAME[:SPLIT]`: a Hugging Face dataset read through `datasets`, streamed.

NAME is whatever `datasets.load_dataset` accepts (a Hub name, or a local folder of data
files); the split defaults to `train`. Images are read undecoded (`Image(decode=False)`)
so the original encoded bytes reach the shard. Id = index of the row in the split.

A Hub name is looked up with one request first: `datasets` retries an unreachable Hub for
about 25 s and then fails with pages of traceback, where a user needs one line saying
whether the Hub could not be reached or has no such dataset, and what to do instead.
"""

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from pipeline.sources.base import ImageSource, SourceRecord

PREFIX = "hf:"
DEFAULT_SPLIT = "train"
HUB_TIMEOUT_S = 10


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
        if not Path(self.name).exists():
            _check_on_hub(self.name, spec)
        try:
            stream = datasets.load_dataset(self.name, split=self.split, streaming=True)
        except ConnectionError as error:  # offline mode without a cached copy, or the Hub lost after the check
            raise ValueError(f"{spec}: the dataset could not be read ({_first_line(error)}); {_instead()}") from error
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


def _instead() -> str:
    """What to do when the Hub cannot give the dataset."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the local cache has no copy: unset it to download, or ingest a local image folder or Parquet files"
    return "ingest a local image folder or Parquet files instead, or set HF_HUB_OFFLINE=1 to use a copy in the local cache"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_on_hub(name: str, spec: str) -> None:
    """One request to the Hub for dataset `name`: one line when it is unreachable or has no such dataset.

    Skipped in offline mode, where `datasets` reads its cache without the network.
    """
    import httpx
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as error:
        raise ValueError(f"{spec}: the dataset is gated; accept its terms on its Hub page, then `hf auth login`") from error
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"{spec}: the Hugging Face Hub has no dataset {name!r} (or it is private: `hf auth login`); "
            "check the name, or ingest a local image folder or Parquet files"
        ) from error
    except (httpx.HTTPError, HfHubHTTPError, OSError) as error:
        raise ValueError(f"{spec}: could not reach the Hugging Face Hub at {constants.ENDPOINT} ({_first_line(error)}); {_instead()}") from error


def _bytes_of(value: dict, index: int, name: str) -> bytes:
    if value.get("bytes") is not None:
        return value["bytes"]
    if value.get("path"):
        with open(value["path"], "rb") as file:
            return file.read()
    raise ValueError(f"hf:{name} row {index}: the image has neither bytes nor a path")
