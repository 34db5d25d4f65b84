"""Official SAM checkpoints: where they come from, and getting one onto disk verified.

A user-supplied checkpoint path is used as given. Otherwise the official file for the
model type is looked up in a cache folder and, when absent, downloaded from Meta's URL
and checked against its published sha256 before it is moved into place; with no network
the error names the file expected and the URL to fetch it from.
"""

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.manifest import file_sha256

DOWNLOAD_CHUNK_BYTES = 1 << 22
DEFAULT_CACHE_DIR = Path(os.environ.get("SEGPIC_CACHE", Path.home() / ".cache" / "segpic")) / "sam"


class SamWeightsUnavailable(FileNotFoundError):
    """No checkpoint on disk and none could be downloaded."""


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint: file name, URL and sha256 (as listed by the segment-anything README)."""

    file_name: str
    url: str
    sha256: str


_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    "vit_h": OfficialWeights(
        "sam_vit_h_4b8939.pth", _BASE_URL + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": OfficialWeights(
        "sam_vit_l_0b3195.pth", _BASE_URL + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": OfficialWeights(
        "sam_vit_b_01ec64.pth", _BASE_URL + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}


def fetch_weights(weights: OfficialWeights, cache_dir: Path) -> Path:
    """`cache_dir/<file_name>`, downloading and verifying it first when it is not there yet."""
    target = Path(cache_dir) / weights.file_name
    if target.is_file():
        if file_sha256(target) != weights.sha256:
            raise ValueError(f"{target}: sha256 does not match the published {weights.sha256}; delete it to re-download")
        return target
    partial = target.with_name(target.name + ".incomplete")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(weights.url) as response, open(partial, "wb") as file:
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                file.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise SamWeightsUnavailable(
            f"no SAM checkpoint: expected {target} (or pass checkpoint=PATH); download it from {weights.url} ({error})"
        ) from error
    if file_sha256(partial) != weights.sha256:
        partial.unlink()
        raise ValueError(f"{weights.url}: downloaded file's sha256 is not the published {weights.sha256}")
    partial.replace(target)
    return target


def resolve_checkpoint(model_type: str, checkpoint: str, cache_dir: str) -> Path:
    """The checkpoint to load: the user's file if given, else the verified official one."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint {path} does not exist")
        return path
    if model_type not in OFFICIAL_WEIGHTS:
        raise ValueError(f"unknown SAM model {model_type!r}; choose one of {', '.join(OFFICIAL_WEIGHTS)}")
    return fetch_weights(OFFICIAL_WEIGHTS[model_type], Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR)
