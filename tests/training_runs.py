"""Helpers of the training tests: mask-shard rows of known label maps, the tiny preset's short run, a checkpoint's step."""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.training.config import Partition, TrainConfig, preset_config
from pipeline.shards import ShardWriter


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_row(record_id: str, label_map: np.ndarray) -> dict:
    """A mask-shard row holding `label_map` as an 8- or 16-bit PNG."""
    return {
        "id": record_id,
        "mask": {"bytes": png_bytes(label_map), "path": None},
        "num_regions": len(np.unique(label_map)),
        "coverage": 1.0,
        "mean_iou": 1.0,
        "generator": "blocks",
        "settings_hash": "test",
    }


def write_shard(path: Path, schema, rows: list[dict]) -> None:
    """One shard through the project's writer, in small row groups so reads cross group borders."""
    with ShardWriter(path, schema, row_group_bytes=20_000) as writer:
        for row in rows:
            writer.write(row)


def blocks(height: int, width: int) -> np.ndarray:
    """Label map of 48-pixel squares, ids increasing row-major."""
    ys, xs = np.mgrid[0:height, 0:width]
    return ((ys // 48) * 16 + xs // 48).astype(np.uint16)


def tiny(shards: tuple[Path, Path], out: Path, masks: bool = True, **overrides) -> TrainConfig:
    """A tiny-preset run of four steps on `shards` (images, block masks), validated and checkpointed every two."""
    settings = {"crop": 64, "batch_size": 2, "steps": 4, "val_every": 2, "checkpoint_every": 2, "progress": False}
    partition = Partition(shards[1]) if masks else Partition()
    return preset_config("tiny", shards[0], out, partition=partition, **{**settings, **overrides})


def checkpoint_step(path: Path) -> int:
    if not path.is_file():
        return 0
    return torch.load(path, weights_only=True)["training"]["progress"]["step"]
