"""Per-source summary of mask shards: how finely each generator partitions the images.

The comparison stage reports these beside the BD-rates, so a difference in rate-distortion
can be read against what the masks looked like (regions per image, share of pixels covered).
Images the masks stage could not label (the failure marker) are counted apart and left
out of every average, as training leaves them out. Sources are keyed by folder name, or
by as much of their path as tells them apart when two folders share a name. With the
image folder given, a contact sheet per source (`pipeline.contact_sheets`) is drawn too.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.contact_sheets import write_contact_sheet
from pipeline.atomic_files import write_json_atomically
from pipeline.shards import MASK_KIND, is_failure_marker, list_shards, read_rows, shard_kind

STAT_COLUMNS = ("generator", "num_regions", "coverage", "mean_iou")
CONTACT_SHEETS_DIR = "contact_sheets"


@dataclass(frozen=True)
class MaskSourceStats:
    """Summary of one mask shard directory; averages cover the labelled images only (None when there are none)."""

    source: str
    generator: str
    images: int
    failed: int
    regions_mean: float | None
    regions_median: float | None
    regions_max: int | None
    coverage_mean: float | None
    mean_iou: float | None  # also None for generators without a quality score (all but SAM)


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
        regions_mean=float(regions.mean()) if labelled else None,
        regions_median=float(np.median(regions)) if labelled else None,
        regions_max=int(regions.max()) if labelled else None,
        coverage_mean=_mean_or_none([row["coverage"] for row in labelled]),
        mean_iou=_mean_or_none([row["mean_iou"] for row in labelled]),
    )


def source_names(directories: list[Path]) -> list[str]:
    """Each folder's name, lengthened to the fewest trailing path parts that tell clashing names apart."""
    parts = [Path(directory).resolve().parts for directory in directories]
    names = []
    for own in parts:
        depth = 1
        while depth < len(own) and sum(other[-depth:] == own[-depth:] for other in parts) > 1:
            depth += 1
        names.append("/".join(own[-depth:]))
    return names


def _number(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def stats_table(stats: list[MaskSourceStats]) -> str:
    """Markdown table, one line per mask source; averages leave failed images out."""
    lines = [
        "| mask source | generator | images | failed | regions/image (mean) | median | max | coverage | mean IoU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in stats:
        lines.append(
            f"| {item.source} | {item.generator} | {item.images} | {item.failed} | {_number(item.regions_mean, '.1f')} | "
            f"{_number(item.regions_median, '.0f')} | {_number(item.regions_max, 'd')} | "
            f"{_number(item.coverage_mean, '.1%')} | {_number(item.mean_iou, '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def write_mask_stats(directories: list[Path], out: Path, images: Path | None = None) -> list[MaskSourceStats]:
    """Summarise each directory and write `out` (JSON keyed by source, as `dvc metrics` reads it) and a Markdown twin.

    With `images`, also draw `contact_sheets/<source>.png` beside `out` for each source.
    """
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the JSON file to write (e.g. {out / 'mask_stats.json'})")
    names = source_names(directories)
    stats = [summarize_mask_shards(Path(directory), name) for directory, name in zip(directories, names)]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out, {item.source: asdict(item) for item in stats})
    out.with_suffix(".md").write_text(stats_table(stats))
    if images is not None:
        for directory, name in zip(directories, names):
            write_contact_sheet(Path(directory), Path(images), out.parent / CONTACT_SHEETS_DIR / f"{name.replace('/', '-')}.png")
    return stats
