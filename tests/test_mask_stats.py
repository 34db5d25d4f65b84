"""Mask statistics: per-source summaries read from real mask shards."""

import io
import json
import math

import numpy as np
from PIL import Image

from pipeline.mask_stats import write_mask_stats
from pipeline.shards import MASK_SCHEMA, ShardWriter, shard_name


def write_mask_shard(directory, rows):
    directory.mkdir()
    with ShardWriter(directory / shard_name(0, 1), MASK_SCHEMA) as writer:
        for index, (num_regions, coverage, mean_iou) in enumerate(rows):
            buffer = io.BytesIO()
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
            writer.write({"id": str(index), "mask": {"bytes": buffer.getvalue(), "path": None},
                          "num_regions": num_regions, "coverage": coverage, "mean_iou": mean_iou,
                          "generator": directory.name, "settings_hash": "0"})


def test_summary_per_source_with_missing_iou_as_null(tmp_path):
    write_mask_shard(tmp_path / "sam", [(10, 0.5, 0.75), (30, 1.0, 0.25)])
    write_mask_shard(tmp_path / "grid", [(16, 1.0, math.nan), (16, 1.0, math.nan)])
    write_mask_stats([tmp_path / "sam", tmp_path / "grid"], tmp_path / "out" / "stats.json")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["sam"]["regions_mean"] == 20 and stats["sam"]["regions_max"] == 30
    assert stats["sam"]["coverage_mean"] == 0.75 and stats["sam"]["mean_iou"] == 0.5
    assert stats["grid"]["mean_iou"] is None
    table = (tmp_path / "out" / "stats.md").read_text()
    assert "| sam | sam | 2 | 20.0 |" in table and "n/a" in table
