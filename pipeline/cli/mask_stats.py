"""`segpic mask-stats`: regions per image and coverage of each mask source, for the comparison."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.overwrite import OverwriteOption


def mask_stats(
    directories: Annotated[
        list[Path],
        typer.Argument(help="Mask shard directories, one per mask source; with --names-from, one folder holding them."),
    ],
    out: Annotated[Path, typer.Option(help="JSON summary to write (a Markdown table is written beside it).")],
    images: Annotated[
        Path | None,
        typer.Option(help="Image shard folder of the masks: also draw contact_sheets/<source>.png beside --out."),
    ] = None,
    names_from: Annotated[
        str | None,
        typer.Option(
            help="FILE:DOTTED.KEY listing the mask sources of the study (e.g. params.yaml:masks.generators): "
            "summarise DIRECTORY/NAME for each, leaving other folders out.",
        ),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Summarise mask shards: regions per image, share of pixels covered, mean predicted IoU (failed images apart)."""
    from pipeline.cli.file_values import named_folders, read_names
    from pipeline.mask_stats import stats_table, write_mask_stats

    left_out: list[str] = []
    with exit_on_user_error():
        if names_from:
            if len(directories) != 1:
                raise ValueError("--names-from takes one folder of mask shard folders, not several directories")
            names = read_names(names_from, "--names-from")
            directories, left_out = named_folders(directories[0], names, names_from, "mask shard folder")
        outputs = write_mask_stats(directories, out, images, overwrite)
    for line in left_out:
        typer.echo(line, err=True)
    typer.echo(stats_table(outputs.stats), nl=False)
    typer.echo(f"wrote {', '.join(map(str, outputs.files()))}")
    for warning in filter(None, (item.warning() for item in outputs.stats)):
        typer.echo(warning, err=True)
