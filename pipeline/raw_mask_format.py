"""How raw masks are kept, encoder and decoder together: COCO compressed RLE, one list per image.

Raw masks are what a generator found before the label-map rule (`pipeline.label_maps`) made a
partition of them: SAM's overlapping masks with their scores, or the regions of a generator
that partitions the image itself. Version 1 (`pipeline.shards.RAW_MASK_FORMAT_VERSION`): each mask is COCO's
compressed run-length encoding of its (H, W) binary mask, column-major (`segmentation` =
`{"size": [H, W], "counts": str}`, what `pycocotools.mask.decode` reads and SA-1B ships), its
`bbox` [x, y, w, h] and `area` in pixels, and, where the generator has them, SAM's
`predicted_iou` and `stability_score`, and for text-prompted (concept) masks the `prompt` and
its `score`. Raw shards hold these lists in their `masks` column (`pipeline.shards.RAW_SCHEMA`).

Masks are encoded with pycocotools (`rles_from_masks`), and a partition from one pass over its
label map (`rles_from_partition`). Painting decodes the string back to runs (`runs_from_counts`), not to a full
mask, so its cost grows with the mask's area rather than the image's. Scores are stored as
float32, and a `RawMask` holds the float32 value, so a mask read back from a shard equals the
one the generator made, bit for bit.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as coco_mask

if TYPE_CHECKING:  # the data commands that read raw masks start without torch
    import torch

COUNT_OFFSET = 48  # COCO's string: 5 bits a character, offset into printable ASCII
MORE_BIT = 0x20
SIGN_BIT = 0x10
VALUE_BITS = 0x1F


def _float32(value: float | None) -> float | None:
    """`value` rounded to float32 as a Python float (what a float32 Parquet column gives back); None stays None."""
    return None if value is None else float(np.float32(value))


@dataclass(frozen=True)
class RawMask:
    """One mask in COCO compressed RLE with its box, area and whatever scores the generator gave it."""

    counts: str
    bbox: tuple[int, int, int, int]  # x, y, width, height
    area: int
    predicted_iou: float | None = None
    stability_score: float | None = None
    prompt: str | None = None
    score: float | None = None

    @property
    def quality(self) -> float:
        """The mask's score as the rule ranks it: SAM's predicted IoU, else a concept's score, else NaN."""
        for value in (self.predicted_iou, self.score):
            if value is not None:
                return value
        return math.nan

    def to_row(self, height: int, width: int) -> dict[str, Any]:
        """The `masks` list entry of a raw shard row (COCO's annotation fields)."""
        return {
            "segmentation": {"size": [height, width], "counts": self.counts},
            "bbox": list(self.bbox),
            "area": self.area,
            "predicted_iou": self.predicted_iou,
            "stability_score": self.stability_score,
            "prompt": self.prompt,
            "score": self.score,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RawMask":
        return cls(
            counts=row["segmentation"]["counts"],
            bbox=tuple(row["bbox"]),
            area=row["area"],
            predicted_iou=row["predicted_iou"],
            stability_score=row["stability_score"],
            prompt=row["prompt"],
            score=row["score"],
        )


@dataclass(frozen=True)
class RawMasks:
    """One image's raw masks in the generator's order (the order breaks ties in the rule)."""

    height: int
    width: int
    masks: tuple[RawMask, ...]

    def to_rows(self) -> list[dict[str, Any]]:
        return [mask.to_row(self.height, self.width) for mask in self.masks]

    @classmethod
    def from_rows(cls, height: int, width: int, rows: Sequence[dict[str, Any]], record: str) -> "RawMasks":
        """Rows of a raw shard's `masks` column; refuses a mask whose size is not the image's."""
        for row in rows:
            if list(row["segmentation"]["size"]) != [height, width]:
                raise ValueError(f"raw masks of {record}: a mask of size {row['segmentation']['size']} on a {height}x{width} image")
        return cls(height, width, tuple(RawMask.from_row(row) for row in rows))


def raw_masks(
    rles: Sequence[dict[str, Any]],
    height: int,
    width: int,
    predicted_ious: Sequence[float | None] | None = None,
    stability_scores: Sequence[float | None] | None = None,
    prompts: Sequence[str | None] | None = None,
    scores: Sequence[float | None] | None = None,
) -> RawMasks:
    """pycocotools' compressed RLE dicts (`rles_from_masks`, `rles_from_partition`) -> `RawMasks`, scores as float32."""
    none = [None] * len(rles)
    areas = coco_mask.area(list(rles)).tolist() if rles else []
    boxes = coco_mask.toBbox(list(rles)).astype(int).tolist() if rles else []
    masks = tuple(
        RawMask(
            counts=rle["counts"].decode("ascii"), bbox=tuple(box), area=int(area),
            predicted_iou=_float32(iou), stability_score=_float32(stability), prompt=prompt, score=_float32(score),
        )
        for rle, box, area, iou, stability, prompt, score in zip(
            rles, boxes, areas, predicted_ious or none, stability_scores or none, prompts or none, scores or none
        )
    )
    return RawMasks(height, width, masks)


def dense_raw_masks(masks: "np.ndarray | torch.Tensor", **scores: Sequence[Any]) -> RawMasks:
    """(n, H, W) bool masks (NumPy, or torch on any device) with per-mask `scores` (`raw_masks`' keywords) -> `RawMasks`."""
    return raw_masks(rles_from_masks(masks), masks.shape[1], masks.shape[2], **scores)


def partition_raw_masks(label_map: np.ndarray, unlabelled: int | None = None) -> RawMasks:
    """A partition's regions as raw masks, in ascending id order (no scores); id `unlabelled` is left uncovered."""
    ids, rles = rles_from_partition(label_map)
    kept = [rle for region, rle in zip(ids.tolist(), rles) if region != unlabelled]
    return raw_masks(kept, label_map.shape[0], label_map.shape[1])


def rles_from_masks(masks: "np.ndarray | torch.Tensor") -> list[dict[str, Any]]:
    """(n, H, W) bool masks (NumPy, or torch on any device) -> compressed RLE dicts, by pycocotools on a column-major copy.

    The fastest of the encoders measured (`benchmarks/bench_repaint.py`): segment-anything's own
    `mask_to_rle_pytorch` + `coco_encode_rle` take about a hundred times longer on a CPU.
    """
    count = masks.shape[0]
    if count == 0:
        return []
    host = masks if isinstance(masks, np.ndarray) else masks.cpu().numpy()
    column_major = np.ascontiguousarray(host.astype(bool, copy=False).transpose(0, 2, 1)).view(np.uint8).transpose(2, 1, 0)
    return coco_mask.encode(column_major)


def _rle_from_runs(runs: np.ndarray, height: int, width: int) -> dict[str, Any]:
    """Uncompressed COCO counts -> pycocotools' compressed RLE dict."""
    return coco_mask.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)


def rles_from_partition(label_map: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(H, W) region ids -> (the ids present, ascending; each region's compressed RLE), from one pass over the map."""
    height, width = label_map.shape
    flat = np.ascontiguousarray(label_map.T).ravel()
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    order = np.argsort(flat[starts], kind="stable")
    ids, first = np.unique(flat[starts][order], return_index=True)
    rles = []
    for begin, end in zip(first, np.concatenate([first[1:], [len(order)]])):
        region_starts, region_lengths = starts[order[begin:end]], lengths[order[begin:end]]
        gaps = region_starts - np.concatenate([[0], region_starts[:-1] + region_lengths[:-1]])
        runs = np.stack([gaps, region_lengths], axis=1).ravel()
        tail = flat.size - (region_starts[-1] + region_lengths[-1])
        rles.append(_rle_from_runs(np.concatenate([runs, [tail]]) if tail else runs, height, width))
    return ids, rles


def runs_from_counts(counts: str) -> np.ndarray:
    """COCO's compressed string -> uncompressed counts (int64), as pycocotools' `rleFrString` reads it.

    Each count is 5-bit groups, least significant first, offset by 48, with a continuation bit
    (0x20) and a sign bit in the last group (0x10); from the fourth count on, each is stored as
    its difference from the count two places before.
    """
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - COUNT_OFFSET
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (chars & MORE_BIT) == 0
    value_of_char = np.concatenate([[0], np.cumsum(last[:-1])])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    shift = 5 * (np.arange(chars.size) - starts[value_of_char])
    values = np.add.reduceat((chars & VALUE_BITS) << shift, starts)
    ends = np.flatnonzero(last)
    negative = (chars[ends] & SIGN_BIT) != 0
    values[negative] |= -1 << (shift[ends][negative] + 5)
    values[3::2] = np.cumsum(values[1::2])[1:]
    values[4::2] = np.cumsum(values[2::2])[1:]
    return values
