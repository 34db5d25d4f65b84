"""`segpic repaint RAW --out LABELS`: label maps from kept raw masks by another rule, without the network."""

import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.file_values import file_settings
from pipeline.cli.generator_settings import parse_settings
from pipeline.cli.timings import TimingsOption, check_outside, write_timings


def repaint(
    raw: Annotated[Path, typer.Argument(help="Raw mask shard directory (segpic masks --raw, or OUT-raw).")],
    out: Annotated[Path, typer.Option(help="Mask shard directory to write (same shard names and row order as RAW).")],
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Label-map rule setting KEY=VALUE, repeatable: speck_area, max_regions, min_predicted_iou, "
            "min_mask_area, max_masks, rank_masks_by=score|area (README: the label-map rule).",
        ),
    ] = None,
    settings: Annotated[
        str | None,
        typer.Option(help="Rule settings from a YAML/JSON mapping: FILE, or FILE:DOTTED.KEY; --set wins over it."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Threads applying the rule and encoding label maps.")] = 2,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (images/s).")] = True,
    timings: TimingsOption = None,
) -> None:
    """Write OUT/part-*.parquet label-map shards from RAW's raw masks (byte-identical to segpic masks with that rule)."""
    from pipeline.repaint import RepaintConfig, repaint as run_repaint

    started = time.perf_counter()
    with exit_on_user_error():
        check_outside(timings, out)
        options = (file_settings(settings) if settings else ()) + parse_settings(setting or [], "")
        config = RepaintConfig(raw=raw, out=out, options=options, workers=workers, progress=progress)
        summary = run_repaint(config)
        write_timings(timings, time.perf_counter() - started, summary.images)
    state = "complete" if summary.complete else "incomplete"
    typer.echo(
        f"{out}: wrote {len(summary.written)} shard(s), {summary.images} image(s), {summary.failed} failed; "
        f"{len(summary.already_done)} shard(s) already done; set {state}"
    )
