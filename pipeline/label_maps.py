"""Label maps: one integer region id per pixel, the form SegPIC's privileged masks take.

SAM returns overlapping binary masks that leave holes; SegPIC needs a partition. The rule
(`masks_to_label_map`), deterministic for a given list of masks:

1. Paint masks in order of area, largest first (ties: higher predicted IoU first, then
   earlier in the list), so small objects painted later stay on top of large ones.
2. Each 4-connected area no mask covers becomes a region of its own.
3. Regions smaller than `speck_area` pixels, and then the smallest regions while there
   are more than `max_regions`, merge one at a time (smallest first, ties by lower id)
   into the neighbour they share the longest border with (ties: larger neighbour, then
   lower id). A region with no neighbour (the whole image) is kept.
4. Ids are renumbered 0..n-1 in order of first appearance in raster order.

How label maps are stored (lossless PNG) is `pipeline.label_map_format`.
"""

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.measure import label as connected_components

from pipeline.label_map_format import MAX_16BIT_REGIONS


@dataclass(frozen=True)
class LabelMapRule:
    """Clean-up settings shared by every generator: speck size and region cap."""

    speck_area: int = 64
    max_regions: int = 256

    def __post_init__(self) -> None:
        if self.speck_area < 0:
            raise ValueError(f"speck_area must be >= 0, got {self.speck_area}")
        if not 1 <= self.max_regions <= MAX_16BIT_REGIONS:
            raise ValueError(f"max_regions must be in 1..{MAX_16BIT_REGIONS}, got {self.max_regions}")


@dataclass(frozen=True)
class RegionMask:
    """One binary mask kept only inside its box (x0, y0, x1, y1), so thousands fit in memory."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray  # (y1 - y0, x1 - x0) bool
    predicted_iou: float

    @classmethod
    def from_full(cls, mask: np.ndarray, predicted_iou: float) -> "RegionMask":
        """Crop a full-size (H, W) boolean mask to its bounding box (empty masks keep a 0x0 box)."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return cls((0, 0, 0, 0), np.zeros((0, 0), dtype=bool), predicted_iou)
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls((x0, y0, x1, y1), np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool), predicted_iou)

    @property
    def area(self) -> int:
        return int(self.pixels.sum())

    def to_full(self, height: int, width: int) -> np.ndarray:
        """The (H, W) boolean mask."""
        full = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.box
        full[y0:y1, x0:x1] = self.pixels
        return full


@dataclass(frozen=True)
class LabelMapStats:
    """Per-image statistics stored beside each label map (NaN where not applicable)."""

    num_regions: int
    coverage: float
    mean_iou: float


@dataclass(frozen=True)
class MaskResult:
    """What every generator returns: an (H, W) int32 label map with ids 0..n-1, and its stats."""

    label_map: np.ndarray
    stats: LabelMapStats


def paint_order(areas: Sequence[int], predicted_ious: Sequence[float]) -> list[int]:
    """Step 1's order: indices by area, largest first; ties by higher predicted IoU, then earlier."""
    return sorted(range(len(areas)), key=lambda index: (-areas[index], -predicted_ious[index], index))


def masks_to_label_map(masks: Sequence[RegionMask], height: int, width: int, rule: LabelMapRule) -> MaskResult:
    """Apply the module's overlap rule to SAM-style masks; coverage is the share of pixels any mask covered."""
    ious = [mask.predicted_iou for mask in masks]
    painted = np.zeros((height, width), dtype=np.int32)
    for region_id, index in enumerate(paint_order([mask.area for mask in masks], ious), start=1):
        x0, y0, x1, y1 = masks[index].box
        painted[y0:y1, x0:x1][masks[index].pixels] = region_id
    return label_painted_map(painted, len(masks), rule, ious)


def label_painted_map(painted: np.ndarray, mask_count: int, rule: LabelMapRule, predicted_ious: Sequence[float]) -> MaskResult:
    """Steps 2-4 on an (H, W) int32 map where masks painted ids 1..mask_count and 0 is uncovered (changed in place)."""
    uncovered = painted == 0
    holes = connected_components(uncovered, connectivity=1).astype(np.int32)
    painted[uncovered] = holes[uncovered] + mask_count
    coverage = 1.0 - float(uncovered.mean())
    mean_iou = float(np.mean(predicted_ious)) if mask_count else float("nan")
    return finish_label_map(painted, rule, coverage=coverage, mean_iou=mean_iou)


def finish_label_map(label_map: np.ndarray, rule: LabelMapRule, coverage: float, mean_iou: float) -> MaskResult:
    """Merge specks and excess regions (steps 3-4 of the rule) and renumber; used by every generator."""
    merged = merge_small_regions(label_map, rule)
    canonical = canonical_relabel(merged)
    stats = LabelMapStats(num_regions=int(canonical.max()) + 1, coverage=coverage, mean_iou=mean_iou)
    return MaskResult(label_map=canonical, stats=stats)


def canonical_relabel(label_map: np.ndarray) -> np.ndarray:
    """Renumber ids 0..n-1 by first appearance in raster order (equal partitions -> equal arrays)."""
    values, first, inverse = np.unique(label_map.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(values), dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(values), dtype=np.int32)
    return rank[inverse].reshape(label_map.shape)


def _border_lengths(label_map: np.ndarray) -> dict[int, Counter]:
    """For each region, how many 4-neighbour pixel pairs it shares with each other region."""
    pairs = [
        (label_map[:, :-1].ravel(), label_map[:, 1:].ravel()),
        (label_map[:-1, :].ravel(), label_map[1:, :].ravel()),
    ]
    first = np.concatenate([a for a, _ in pairs]).astype(np.int64)
    second = np.concatenate([b for _, b in pairs]).astype(np.int64)
    differ = first != second
    low, high = np.minimum(first, second)[differ], np.maximum(first, second)[differ]
    edges, counts = np.unique(np.stack([low, high]), axis=1, return_counts=True)
    borders: dict[int, Counter] = {}
    for (a, b), count in zip(edges.T.tolist(), counts.tolist()):
        borders.setdefault(a, Counter())[b] = count
        borders.setdefault(b, Counter())[a] = count
    return borders


def merge_small_regions(label_map: np.ndarray, rule: LabelMapRule) -> np.ndarray:
    """Step 3 of the rule: merge specks, then enforce the cap, smallest region first."""
    ids, counts = np.unique(label_map, return_counts=True)
    areas = dict(zip(ids.tolist(), counts.tolist()))
    borders = _border_lengths(label_map)
    target = {region: region for region in areas}
    queue = [(area, region) for region, area in areas.items()]
    heapq.heapify(queue)
    while queue and len(areas) > 1:
        area, region = heapq.heappop(queue)
        if areas.get(region) != area:
            continue  # stale entry: the region grew or is gone
        if area >= rule.speck_area and len(areas) <= rule.max_regions:
            break
        neighbours = borders.pop(region, Counter())
        if not neighbours:
            continue
        into = min(neighbours, key=lambda other: (-neighbours[other], -areas[other], other))
        for other, length in neighbours.items():
            borders[other].pop(region, None)
            if other != into:
                borders[into][other] += length
                borders[other][into] += length
        areas[into] += areas.pop(region)
        target[region] = into
        heapq.heappush(queue, (areas[into], into))
    lookup = np.array([_resolve(target, region) for region in ids.tolist()], dtype=np.int32)
    return lookup[np.searchsorted(ids, label_map)]


def _resolve(target: dict[int, int], region: int) -> int:
    """Follow merges to the region that finally absorbed `region`."""
    while target[region] != region:
        region = target[region]
    return region
