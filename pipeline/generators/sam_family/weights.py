"""Checkpoints of the SAM family: where official ones come from, getting one verified, and naming one by content.

A user-supplied checkpoint path is used as given. Otherwise the official file for the
model (the family's default size when `model` is left to the file) is looked up in a cache
folder and, when absent, downloaded from Meta's URL and checked against its sha256 before
it is moved into place; with no network the error names the file expected and the URL to
fetch it from. Meta publishes sha256 sums for SAM 1 only; for SAM 2.1 the user passes the
sum to check against (`sha256=`). A gated file (SAM 3's needs an account that accepted
Meta's licence) is never downloaded here: the error says how to fetch it.

Mask settings name weights by their sha256 (`weights_sha256`), never by file name and
size. Hashing a 2.5 GB file takes seconds, so sums are remembered in
`<cache root>/sha256-cache.json` by resolved path, size and modification time.
"""

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic_files import atomic_output, write_json_atomically
from pipeline.manifest import file_sha256

DOWNLOAD_CHUNK_BYTES = 1 << 22
HASH_CACHE_NAME = "sha256-cache.json"


def cache_root() -> Path:
    """`$SEGPIC_CACHE`, else ~/.cache/segpic (read when called, so a job can point it elsewhere)."""
    return Path(os.environ.get("SEGPIC_CACHE", Path.home() / ".cache" / "segpic"))


class SamWeightsUnavailable(FileNotFoundError):
    """No checkpoint on disk and none could be downloaded."""


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint: file name, URL and sha256 (None where Meta publishes none)."""

    file_name: str
    url: str
    sha256: str | None
    gated: str = ""  # how to fetch a file that needs an account ({folder}: the cache folder); empty: downloadable


@dataclass(frozen=True)
class WeightsFamily:
    """The official checkpoints of one model family, cached under `cache_root()/folder`."""

    title: str
    folder: str
    weights: dict[str, OfficialWeights]
    default: str  # the model fetched when neither a checkpoint nor a model is given

    def cache_dir(self, cache_dir: str) -> Path:
        """The folder official files are kept in: the `cache_dir` setting, else the family's folder in the cache root."""
        return Path(cache_dir) if cache_dir else cache_root() / self.folder


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_WEIGHTS = WeightsFamily("SAM", "sam", {
    "vit_h": OfficialWeights(
        "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": OfficialWeights(
        "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": OfficialWeights(
        "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}, default="vit_h")
_SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM21_WEIGHTS = WeightsFamily("SAM 2.1", "sam2", {
    name: OfficialWeights(f"sam2.1_hiera_{name}.pt", f"{_SAM21_URL}sam2.1_hiera_{name}.pt", None)
    for name in ("tiny", "small", "base_plus", "large")
}, default="large")


def weights_sha256(path: Path) -> str:
    """sha256 of a checkpoint, hashed once per (resolved path, size, mtime) and remembered in the cache root."""
    path = Path(path).resolve()
    stat = path.stat()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    cache_file = cache_root() / HASH_CACHE_NAME
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return entry["sha256"]
    digest = file_sha256(path)
    known[key] = {"stamp": stamp, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(cache_file, known)
    except OSError:
        pass  # a read-only cache only costs hashing again next time
    return digest


def fetch_weights(weights: OfficialWeights, cache_dir: Path, sha256: str = "") -> Path:
    """`cache_dir/<file_name>`, downloading it first when absent; checked against the published (or given) sha256."""
    if weights.gated:
        return _cached_gated(weights, Path(cache_dir), sha256)
    expected = sha256 or weights.sha256
    if not expected:
        raise ValueError(
            f"{weights.file_name}: Meta publishes no sha256 for it; pass checkpoint=PATH, or sha256=HEX to download "
            f"{weights.url} and check it"
        )
    target = Path(cache_dir) / weights.file_name
    if target.is_file():
        if weights_sha256(target) != expected:
            raise ValueError(f"{target}: sha256 does not match the expected {expected}; delete it to re-download")
        return target
    try:
        with atomic_output(target) as partial:
            with urllib.request.urlopen(weights.url) as response, open(partial, "wb") as file:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
            if file_sha256(partial) != expected:
                raise ValueError(f"{weights.url}: downloaded file's sha256 is not the expected {expected}")
    except (urllib.error.URLError, OSError) as error:
        raise SamWeightsUnavailable(
            f"no checkpoint: expected {target} (or pass checkpoint=PATH); download it from {weights.url} ({error})"
        ) from error
    return target


def _matching(path: Path, sha256: str) -> Path:
    """`path`, refused when `sha256` is given and the file's differs."""
    if sha256 and weights_sha256(path) != sha256:
        raise ValueError(f"{path}: sha256 does not match the expected {sha256}")
    return path


def _cached_gated(weights: OfficialWeights, cache_dir: Path, sha256: str) -> Path:
    """A gated file from the cache folder (checked against `sha256` when given); never downloaded."""
    target = cache_dir / weights.file_name
    if not target.is_file():
        raise SamWeightsUnavailable(
            f"no checkpoint: expected {target} (or pass checkpoint=PATH); {weights.gated.format(folder=cache_dir)}"
        )
    return _matching(target, sha256)


def resolve_checkpoint(family: WeightsFamily, model: str, checkpoint: str, cache_dir: str, sha256: str = "") -> Path:
    """The checkpoint to load: the user's file if given, else the verified official one (`model` empty: the default)."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{family.title} checkpoint {path} does not exist")
        return _matching(path, sha256)
    model = model or family.default
    if model not in family.weights:
        raise ValueError(f"unknown {family.title} model {model!r}; choose one of {', '.join(family.weights)}")
    return fetch_weights(family.weights[model], family.cache_dir(cache_dir), sha256)
