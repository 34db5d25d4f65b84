"""`segpic mask-stats`: regions per image and coverage of each mask source, for the comparison."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.overwrite import OverwriteOption


def mask_stats(
    directories: Annotated[list[Path], typer.Argument(help="Mask shard directories, one per mask source.")],
    out: Annotated[Path, typer.Option(help="JSON summary to write (a Markdown table is written beside it).")],
    images: Annotated[
        Path | None,
        typer.Option(help="Image shard folder of the masks: also draw contact_sheets/<source>.png beside --out."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Summarise mask shards: regions per image, share of pixels covered, mean predicted IoU (failed images apart)."""
    from pipeline.mask_stats import stats_table, write_mask_stats

    with exit_on_user_error():
        outputs = write_mask_stats(directories, out, images, overwrite)
    typer.echo(stats_table(outputs.stats), nl=False)
    typer.echo(f"wrote {', '.join(map(str, outputs.files()))}")
    for warning in filter(None, (item.warning() for item in outputs.stats)):
        typer.echo(warning, err=True)
