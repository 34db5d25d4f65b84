"""What one mask shard directory holds, in figures: regions per image, coverage, failures.

Read from the statistics columns alone (label maps are not decoded), so `segpic masks` can
end every run with these figures and a warning when the masks are degenerate, and `segpic
mask-stats` tabulates them per mask source. Images the masks stage could not label (the
failure marker) are counted apart and left out of every average, as training leaves them out.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.shards import MASK_KIND, is_failure_marker, list_shards, read_rows, shard_kind

STAT_COLUMNS = ("generator", "num_regions", "coverage", "mean_iou")


@dataclass(frozen=True)
class MaskSourceStats:
    """Summary of one mask shard directory; averages cover the labelled images only (None when there are none)."""

    source: str
    generator: str
    images: int
    failed: int
    no_mask: int  # labelled images no mask covered at all (coverage 0): one region, the whole image
    regions_mean: float | None
    regions_median: float | None
    regions_max: int | None
    coverage_mean: float | None
    mean_iou: float | None  # also None for generators without a quality score (all but SAM)

    def summary(self) -> str:
        """Regions per image and coverage, the figures that show at once whether masks are degenerate."""
        regions, coverage = format_number(self.regions_mean, ".1f"), format_number(self.coverage_mean, ".0%")
        return f"{regions} regions/image, {coverage} of pixels covered"

    def warning(self) -> str | None:
        """One line when most labelled images got no mask at all (untrained or wrong weights, wrong settings)."""
        labelled = self.images - self.failed
        if labelled == 0 or self.no_mask * 2 <= labelled:
            return None
        return (
            f"warning: {self.source}: {self.no_mask} of {labelled} images got no mask at all (0 % coverage, one region); "
            "check the generator's weights and settings before training on these masks"
        )


def _mean_or_none(values: list[float]) -> float | None:
    """Mean over the finite values; None where there are none (JSON has no NaN)."""
    finite = [value for value in values if value is not None and np.isfinite(value)]
    return float(np.mean(finite)) if finite else None


def _mask_shards(directory: Path) -> list[Path]:
    """The complete mask shard set of `directory`; an image folder or a damaged file raises naming it."""
    shards = list_shards(directory)
    for shard in shards:
        if (kind := shard_kind(shard)) != MASK_KIND:
            raise ValueError(f"{shard} is an {kind} shard; mask-stats reads mask shard folders (segpic masks --out)")
    return shards


def summarize_mask_shards(directory: Path, source: str | None = None) -> MaskSourceStats:
    """Read the statistics columns of every mask shard in `directory` (label maps are not decoded)."""
    rows = [row for shard in _mask_shards(directory) for row in read_rows(shard, columns=STAT_COLUMNS)]
    generators = sorted({row["generator"] for row in rows})
    if len(generators) != 1:
        raise ValueError(f"{directory}: mask shards mix generators {generators}")
    labelled = [row for row in rows if not is_failure_marker(row["num_regions"])]
    regions = np.array([row["num_regions"] for row in labelled], dtype=np.int64)
    return MaskSourceStats(
        source=source or directory.name,
        generator=generators[0],
        images=len(rows),
        failed=len(rows) - len(labelled),
        no_mask=sum(row["coverage"] == 0 for row in labelled),
        regions_mean=float(regions.mean()) if labelled else None,
        regions_median=float(np.median(regions)) if labelled else None,
        regions_max=int(regions.max()) if labelled else None,
        coverage_mean=_mean_or_none([row["coverage"] for row in labelled]),
        mean_iou=_mean_or_none([row["mean_iou"] for row in labelled]),
    )


def format_number(value: float | None, pattern: str) -> str:
    """`value` formatted, or "n/a" where there is none."""
    return "n/a" if value is None else format(value, pattern)
