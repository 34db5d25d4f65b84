"""Per-source table of mask shards: how finely each generator partitions the images.

The comparison stage reports these beside the BD-rates, so a difference in rate-distortion
can be read against what the masks looked like (regions per image, share of pixels covered;
each source's figures come from `pipeline.mask_summary`). Sources are keyed by folder name, or
by as much of their path as tells them apart when two folders share a name. With the
image folder given, a contact sheet per source (`pipeline.contact_sheets`) is drawn too.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic_files import refuse_to_replace, write_bytes_atomically, write_json_atomically
from pipeline.contact_sheets import write_contact_sheet
from pipeline.mask_summary import MaskSourceStats, format_number, summarize_mask_shards

CONTACT_SHEETS_DIR = "contact_sheets"


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


def stats_table(stats: list[MaskSourceStats]) -> str:
    """Markdown table, one line per mask source; averages leave failed images out."""
    lines = [
        "| mask source | generator | images | failed | no mask | regions/image (mean) | median | max | coverage | mean IoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in stats:
        lines.append(
            f"| {item.source} | {item.generator} | {item.images} | {item.failed} | {item.no_mask} | "
            f"{format_number(item.regions_mean, '.1f')} | "
            f"{format_number(item.regions_median, '.0f')} | {format_number(item.regions_max, 'd')} | "
            f"{format_number(item.coverage_mean, '.1%')} | {format_number(item.mean_iou, '.3f')} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MaskStatsOutputs:
    """What `write_mask_stats` found and the files it wrote (contact sheets only with an image folder)."""

    stats: list[MaskSourceStats]
    json: Path
    table: Path
    contact_sheets: list[Path]

    def files(self) -> list[Path]:
        return [self.json, self.table, *self.contact_sheets]


def write_mask_stats(
    directories: list[Path], out: Path, images: Path | None = None, overwrite: bool = False
) -> MaskStatsOutputs:
    """Summarise each directory and write `out` (JSON keyed by source, as `dvc metrics` reads it) and a Markdown twin.

    With `images`, also draw `contact_sheets/<source>.png` beside `out` for each source. Existing
    files among these are refused unless `overwrite`, before anything is read or written.
    """
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the JSON file to write (e.g. {out / 'mask_stats.json'})")
    names = source_names(directories)
    sheets = [out.parent / CONTACT_SHEETS_DIR / f"{name.replace('/', '-')}.png" for name in names] if images is not None else []
    table = out.with_suffix(".md")
    refuse_to_replace([out, table, *sheets], overwrite)
    stats = [summarize_mask_shards(Path(directory), name) for directory, name in zip(directories, names)]
    write_json_atomically(out, {item.source: asdict(item) for item in stats})
    write_bytes_atomically(table, stats_table(stats).encode())
    for directory, sheet in zip(directories, sheets):
        write_contact_sheet(Path(directory), Path(images), sheet)
    return MaskStatsOutputs(stats, out, table, sheets)
