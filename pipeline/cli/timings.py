"""`--timings FILE`: how long a data-stage command took, written outside its output directory.

Shard directories hold only what their inputs and settings decide, so two runs give the
same bytes and a DVC stage's output hash does not change with the machine's load; the
speed of a run goes to this separate file instead (the study declares it a DVC metric).
"""

from pathlib import Path
from typing import Annotated

import typer

TimingsOption = Annotated[
    Path | None,
    typer.Option(help="Also write this run's seconds and images/s as JSON to FILE (outside OUT)."),
]


def check_outside(timings: Path | None, out: Path) -> None:
    """Refuse a timings file inside OUT, where it would make OUT differ from run to run."""
    if timings is not None and timings.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--timings {timings} is inside --out {out}; put it elsewhere, OUT must hold only the shards")


def write_timings(timings: Path | None, seconds: float, images: int) -> None:
    """Write {seconds, images, images_per_second} to `timings` (nothing when it is None)."""
    if timings is None:
        return
    from pipeline.atomic_files import write_json_atomically

    timings.parent.mkdir(parents=True, exist_ok=True)
    rate = round(images / seconds, 3) if seconds > 0 else None
    write_json_atomically(timings, {"seconds": round(seconds, 3), "images": images, "images_per_second": rate})
