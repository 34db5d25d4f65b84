"""Checks shared by the SAM-family repaint tests: masks that really overlap, and `segpic repaint` writing, byte
for byte, what `segpic masks` wrote with the same rule."""

from pathlib import Path

from pycocotools import mask as coco_mask
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.shards import list_shards, read_rows


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in list_shards(folder)}


def overlapping_images(raw: Path) -> list[bool]:
    """Per image of a raw set: whether two of its masks share a pixel (the union is smaller than the sum)."""
    found = []
    for shard in list_shards(raw):
        for row in read_rows(shard):
            rles = [{"size": mask["segmentation"]["size"], "counts": mask["segmentation"]["counts"].encode()} for mask in row["masks"]]
            union = int(coco_mask.area(coco_mask.merge(rles))) if rles else 0
            found.append(len(rles) > 1 and union < sum(mask["area"] for mask in row["masks"]))
    return found


def rule_args(rule: dict) -> list[str]:
    return [arg for key, value in rule.items() for arg in ("--set", f"{key}={value}")]


def assert_repaint_writes_what_masks_wrote(images: Path, labels: Path, raw: Path, rule: dict, out: Path) -> None:
    """`segpic repaint RAW` with `rule` gives `labels`' shards byte for byte, and both pass `segpic verify`."""
    result = CliRunner().invoke(app, ["repaint", str(raw), "--out", str(out), "--no-progress", *rule_args(rule)])
    assert result.exit_code == 0, result.output
    assert shard_bytes(out) == shard_bytes(labels) and len(shard_bytes(out)) == len(list_shards(images))
    for args in (["--masks", str(out), "--raw", str(raw)], ["--masks", str(labels)]):
        verified = CliRunner().invoke(app, ["verify", str(images), *args])
        assert verified.exit_code == 0, verified.output
