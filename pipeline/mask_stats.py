"""Per-source summary of mask shards: how finely each generator partitions the images.

The comparison stage reports these beside the BD-rates, so a difference in rate-distortion
can be read against what the masks looked like (regions per image, share of pixels covered).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest import write_json_atomically
from pipeline.shards import list_shards, read_rows

STAT_COLUMNS = ("generator", "num_regions", "coverage", "mean_iou")


@dataclass(frozen=True)
class MaskSourceStats:
    """Summary of one mask shard directory."""

    source: str
    generator: str
    images: int
    regions_mean: float
    regions_median: float
    regions_max: int
    coverage_mean: float
    mean_iou: float | None  # None for generators without a quality score (all but SAM)


def _mean_or_none(values: list[float]) -> float | None:
    """Mean over the finite values; None where there are none (JSON has no NaN)."""
    finite = [value for value in values if value is not None and np.isfinite(value)]
    return float(np.mean(finite)) if finite else None


def summarize_mask_shards(directory: Path) -> MaskSourceStats:
    """Read the statistics columns of every mask shard in `directory` (label maps are not decoded)."""
    shards = list_shards(directory)
    if not shards:
        raise ValueError(f"{directory}: no mask shards (part-*.parquet) found")
    rows = [row for shard in shards for row in read_rows(shard, columns=STAT_COLUMNS)]
    generators = sorted({row["generator"] for row in rows})
    if len(generators) != 1:
        raise ValueError(f"{directory}: mask shards mix generators {generators}")
    regions = np.array([row["num_regions"] for row in rows], dtype=np.int64)
    return MaskSourceStats(
        source=directory.name,
        generator=generators[0],
        images=len(rows),
        regions_mean=float(regions.mean()),
        regions_median=float(np.median(regions)),
        regions_max=int(regions.max()),
        coverage_mean=float(np.mean([row["coverage"] for row in rows])),
        mean_iou=_mean_or_none([row["mean_iou"] for row in rows]),
    )


def stats_table(stats: list[MaskSourceStats]) -> str:
    """Markdown table, one line per mask source."""
    lines = [
        "| mask source | generator | images | regions/image (mean) | median | max | coverage | mean IoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in stats:
        iou = "n/a" if item.mean_iou is None else f"{item.mean_iou:.3f}"
        lines.append(
            f"| {item.source} | {item.generator} | {item.images} | {item.regions_mean:.1f} | "
            f"{item.regions_median:.0f} | {item.regions_max} | {item.coverage_mean:.1%} | {iou} |"
        )
    return "\n".join(lines) + "\n"


def write_mask_stats(directories: list[Path], out: Path) -> list[MaskSourceStats]:
    """Summarise each directory and write `out` (JSON keyed by source, as `dvc metrics` reads it) and a Markdown twin."""
    stats = [summarize_mask_shards(directory) for directory in directories]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out, {item.source: asdict(item) for item in stats})
    out.with_suffix(".md").write_text(stats_table(stats))
    return stats

