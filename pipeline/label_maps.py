"""The label-map rule: a generator's raw masks -> one integer region id per pixel, SegPIC's privileged masks.

Every generator yields raw masks (`pipeline.raw_mask_format.RawMasks`: SAM's overlapping masks
with their scores, or the regions of a generator that partitions the image itself); SegPIC
needs a partition. This module is the one place where masks become a partition, used by
`segpic masks` after the generator and by `segpic repaint` from stored raw masks, so both write
the same label maps. The rule (`LabelMapRule`; every key is a `--set` of both commands),
deterministic for a given list of masks:

0. Which masks count (opt-in; by default every mask does): masks whose quality (SAM's
   predicted IoU; for a concept instance, its score) is under `min_predicted_iou` and masks of
   fewer than `min_mask_area` pixels are dropped; then, when `max_masks` > 0, only the
   `max_masks` best are kept, ranked by `rank_masks_by`: `score` (higher quality first, ties
   larger area) or `area` (larger first, ties higher quality); remaining ties keep the
   generator's order. Masks without a quality are never dropped by the floor.
1. Paint the kept masks in order of area, largest first (ties: higher quality first, then
   earlier in the list), so small objects painted later stay on top of large ones.
2. Each 4-connected area no mask covers becomes a region of its own.
3. Regions smaller than `speck_area` pixels, and then the smallest regions while there
   are more than `max_regions`, merge one at a time (smallest first, ties by lower id)
   into the neighbour they share the longest border with (ties: larger neighbour, then
   lower id). A region with no neighbour (the whole image) is kept.
4. Ids are renumbered 0..n-1 in order of first appearance in raster order.

Statistics beside each map: `coverage`, the share of pixels some kept mask covers, and
`mean_iou`, the mean quality of the kept masks that have one (NaN when none has).

How label maps are stored (lossless PNG) is `pipeline.label_map_format`; raw masks,
`pipeline.raw_mask_format`.
"""

import dataclasses
import heapq
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import label as connected_components

from pipeline.label_map_format import MAX_16BIT_REGIONS
from pipeline.raw_mask_format import RawMask, RawMasks, runs_from_counts

RANKINGS = ("score", "area")


@dataclass(frozen=True)
class LabelMapRule:
    """The rule's settings (see the module docstring); the defaults keep every mask."""

    speck_area: int = 64
    max_regions: int = 256
    min_predicted_iou: float = 0.0
    min_mask_area: int = 0
    max_masks: int = 0  # 0: no cap
    rank_masks_by: str = "score"

    def __post_init__(self) -> None:
        if self.speck_area < 0:
            raise ValueError(f"speck_area must be >= 0, got {self.speck_area}")
        if not 1 <= self.max_regions <= MAX_16BIT_REGIONS:
            raise ValueError(f"max_regions must be in 1..{MAX_16BIT_REGIONS}, got {self.max_regions}")
        if not 0.0 <= self.min_predicted_iou <= 1.0:
            raise ValueError(f"min_predicted_iou must be in [0, 1], got {self.min_predicted_iou}")
        if self.min_mask_area < 0 or self.max_masks < 0:
            raise ValueError(f"min_mask_area and max_masks must be >= 0, got {self.min_mask_area} and {self.max_masks}")
        if self.rank_masks_by not in RANKINGS:
            raise ValueError(f"rank_masks_by must be one of {', '.join(RANKINGS)}, got {self.rank_masks_by!r}")

    def settings(self) -> dict[str, Any]:
        """What a label-map set records of its rule: the two keys every set has, and the opt-in keys that are set.

        Leaving opt-in keys out at their defaults keeps the settings hash of every set made
        before they existed, so such sets still resume and pass as the same settings.
        """
        defaults = LabelMapRule()
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name in ("speck_area", "max_regions") or getattr(self, field.name) != getattr(defaults, field.name)
        }

    def applied_to(self, network_settings: dict[str, Any]) -> dict[str, Any]:
        """The settings of label maps this rule makes from raw masks made with `network_settings`.

        `segpic masks` and `segpic repaint` both name their label maps with this, so equal
        inputs and rule give equal settings hashes in the shards.
        """
        settings = {key: value for key, value in network_settings.items() if key in ("generator", "config")}
        settings["rule"] = self.settings()
        settings.update(network_settings)
        return settings

    def keeps(self, masks: Sequence[RawMask]) -> list[int]:
        """Step 0: indices of the masks that count, in the generator's order."""
        kept = [
            index
            for index, mask in enumerate(masks)
            if mask.area >= self.min_mask_area and not mask.quality < self.min_predicted_iou
        ]
        if self.max_masks and len(kept) > self.max_masks:
            kept = sorted(sorted(kept, key=lambda index: self._rank(masks[index], index))[: self.max_masks])
        return kept

    def _rank(self, mask: RawMask, index: int) -> tuple:
        quality = _comparable(mask.quality)
        return (-quality, -mask.area, index) if self.rank_masks_by == "score" else (-mask.area, -quality, index)


RULE_FIELDS = tuple(field.name for field in dataclasses.fields(LabelMapRule))


def split_rule_settings(options: Sequence[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the generator's own settings, the rule's) of a settings block that holds both, as params.yaml's do."""
    network = {key: value for key, value in options if key not in RULE_FIELDS}
    rule = {key: value for key, value in options if key in RULE_FIELDS}
    return network, rule


@dataclass(frozen=True)
class LabelMapStats:
    """Per-image statistics stored beside each label map (NaN where not applicable)."""

    num_regions: int
    coverage: float
    mean_iou: float


@dataclass(frozen=True)
class MaskResult:
    """A label map (H, W) int32 with ids 0..n-1, and its stats."""

    label_map: np.ndarray
    stats: LabelMapStats


def _comparable(quality: float) -> float:
    """NaN (no quality) ranks below every score, so orderings stay total and deterministic."""
    return -math.inf if math.isnan(quality) else quality


def paint_order(areas: Sequence[int], qualities: Sequence[float]) -> list[int]:
    """Step 1's order: indices by area, largest first; ties by higher quality, then earlier."""
    return sorted(range(len(areas)), key=lambda index: (-areas[index], -_comparable(qualities[index]), index))


def label_map_from_raw(raw: RawMasks, rule: LabelMapRule) -> MaskResult:
    """The whole rule (module docstring) applied to one image's raw masks."""
    masks = [raw.masks[index] for index in rule.keeps(raw.masks)]
    qualities = [mask.quality for mask in masks]
    painted = np.zeros(raw.height * raw.width, dtype=np.int32)  # column-major, as the runs are
    for region_id, index in enumerate(paint_order([mask.area for mask in masks], qualities), start=1):
        painted[_covered_pixels(masks[index].counts)] = region_id
    painted = np.ascontiguousarray(painted.reshape(raw.width, raw.height).T)
    return _finish(painted, len(masks), rule, qualities)


def _covered_pixels(counts: str) -> np.ndarray:
    """Column-major indices of a mask's pixels, from its RLE runs (cost: its area, not the image's)."""
    bounds = np.cumsum(runs_from_counts(counts))
    ends = bounds[1::2]
    starts = bounds[0::2][: len(ends)]
    lengths = ends - starts
    return np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())


def _finish(painted: np.ndarray, mask_count: int, rule: LabelMapRule, qualities: Sequence[float]) -> MaskResult:
    """Steps 2-4 on an (H, W) int32 map where masks painted ids 1..mask_count and 0 is uncovered (changed in place)."""
    uncovered = painted == 0
    holes = connected_components(uncovered, connectivity=1).astype(np.int32)
    painted[uncovered] = holes[uncovered] + mask_count
    coverage = 1.0 - float(uncovered.mean())
    known = [quality for quality in qualities if not math.isnan(quality)]
    mean_iou = float(np.mean(known)) if known else float("nan")
    merged = merge_small_regions(painted, rule)
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
