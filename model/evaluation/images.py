"""The images to evaluate on: a folder of image files, or a directory of image shards.

Images are read lazily (each checkpoint re-reads them) so a large set never sits in
memory decoded; shard rows keep only their encoded bytes.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from model.bitstream import decode_image_bytes
from pipeline.manifest import read_manifest
from pipeline.shards import IMAGE_KIND, list_shards, parse_shard_name, read_rows, shard_kind

# The extensions CompressAI's eval_model collects (from torchvision.datasets.folder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class EvalImage:
    """One image of the set: a stable `name` (file stem or shard id) and how to read its bytes."""

    name: str
    origin: str
    read_bytes: Callable[[], bytes]

    @property
    def file_stem(self) -> str:
        """`name` made safe as a file name, for bitstreams and reconstructions."""
        return _UNSAFE_CHARACTERS.sub("_", self.name).strip("_") or "image"

    def tensor(self) -> torch.Tensor:
        """(1,C,H,W) in [0,1], the pixels ingest would store; C = 1 for grayscale sources, 3 otherwise."""
        return decode_image_bytes(self.read_bytes(), self.origin)


def _folder_images(folder: Path) -> list[EvalImage]:
    paths = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS)
    names = [path.relative_to(folder).with_suffix("").as_posix() for path in paths]
    return [EvalImage(name, str(path), path.read_bytes) for name, path in zip(names, paths)]


def _shard_images(folder: Path) -> list[EvalImage]:
    images = []
    for shard in list_shards(folder):
        kind = shard_kind(shard)
        if kind != IMAGE_KIND:
            raise ValueError(f"{shard}: {kind} shard; evaluation needs image shards")
        for row in read_rows(shard, columns=["id", "image"]):
            payload = row["image"]["bytes"]
            images.append(EvalImage(row["id"], f"{shard} (id {row['id']})", lambda payload=payload: payload))
    return images


def describe_image_set(folder: Path) -> str:
    """What an image folder holds, for titles: the source its shards were ingested from, else the folder's name."""
    try:
        source = str(read_manifest(Path(folder)).settings.get("source") or "")
    except (OSError, ValueError):
        source = ""
    return (Path(source).name if "/" in source else source) or Path(folder).resolve().name


def collect_images(folder: Path) -> list[EvalImage]:
    """Every image under `folder`: shard rows if it holds image shards, else image files (recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such image directory")
    has_shards = any(parse_shard_name(path.name) for path in folder.iterdir())
    images = _shard_images(folder) if has_shards else _folder_images(folder)
    if not images:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)} files or image shards)")
    names = [image.name for image in images]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: several images share a name; names must identify images in the results")
    return images
