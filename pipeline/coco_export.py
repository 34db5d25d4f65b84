"""`segpic export-masks`: raw masks as a COCO annotation file, for tools that read COCO or SA-1B.

The file has COCO's detection layout, class-agnostic: `images` (`id`, `file_name` = the shard
row's id, `width`, `height`), `annotations` (`id`, `image_id`, `category_id` 1, `iscrowd` 0,
`segmentation` = compressed RLE `{size, counts}`, `bbox` [x, y, w, h], `area`, and the raw
mask's `predicted_iou` and `stability_score`, plus `prompt` and `score` for concept masks) and
one category, `object`. `pycocotools.coco.COCO(FILE)` loads it and `pycocotools.mask.decode`
of an annotation gives back exactly the stored mask. Images the generator failed on are listed
with no annotation. Ids count from 1 in shard order, so one shard's file (`--shard`) numbers
its images and annotations from 1 too.

A raw set is exported whole into one file, or one shard at a time (`--shard NAME`, e.g. one
job per shard for a large set: a COCO file is read into memory whole). The raw shards are
checked against their manifest's sha256 before anything is written; the file appears whole or
not at all, and an existing file is replaced only with `overwrite`.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic_files import atomic_output
from pipeline.manifest import ShardEntry
from pipeline.raw_sets import check_checksums, read_raw_set
from pipeline.shards import read_rows

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
SCORE_FIELDS = ("predicted_iou", "stability_score", "prompt", "score")


@dataclass(frozen=True)
class ExportConfig:
    """Export the raw set `raw` (or only its shard `shard`) to the COCO file `out`."""

    raw: Path
    out: Path
    shard: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class ExportSummary:
    images: int
    annotations: int


def _annotation(number: int, image_id: int, mask: dict[str, Any]) -> dict[str, Any]:
    annotation = {
        "id": number,
        "image_id": image_id,
        "category_id": CATEGORY["id"],
        "iscrowd": 0,
        "segmentation": {"size": mask["segmentation"]["size"], "counts": mask["segmentation"]["counts"]},
        "bbox": mask["bbox"],
        "area": mask["area"],
    }
    annotation.update({field: mask[field] for field in SCORE_FIELDS if mask[field] is not None})
    return annotation


def coco_dataset(raw: Path, entries: list[ShardEntry], settings: dict[str, Any]) -> dict[str, Any]:
    """The COCO dict of the raw shards `entries` of `raw`, numbered from 1 in shard and row order."""
    images, annotations = [], []
    for entry in entries:
        for row in read_rows(raw / entry.name):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": row["id"], "width": row["width"], "height": row["height"]})
            annotations += [_annotation(number, image_id, mask) for number, mask in enumerate(row["masks"], start=len(annotations) + 1)]
    info = {"description": f"segpic raw masks of {raw}", "shards": [entry.name for entry in entries], "settings": settings}
    return {"info": info, "images": images, "annotations": annotations, "categories": [CATEGORY]}


def export_masks(config: ExportConfig) -> ExportSummary:
    """Write the COCO file; see the module docstring for what is refused."""
    manifest, entries = read_raw_set(config.raw)
    if config.shard is not None and config.shard not in entries:
        raise ValueError(f"{config.raw} has no shard {config.shard!r}; it holds {', '.join(entries)}")
    if config.out.exists() and not config.overwrite:
        raise ValueError(f"--out {config.out} exists; give --overwrite to replace it")
    chosen = [entries[config.shard]] if config.shard is not None else list(entries.values())
    check_checksums(config.raw, chosen)
    dataset = coco_dataset(config.raw, chosen, manifest.settings)
    with atomic_output(config.out) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(dataset, file)
    return ExportSummary(images=len(dataset["images"]), annotations=len(dataset["annotations"]))
