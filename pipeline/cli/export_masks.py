"""`segpic export-masks RAW --out FILE.json`: raw masks as a COCO annotation file (compressed RLE)."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error


def export_masks(
    raw: Annotated[Path, typer.Argument(help="Raw mask shard directory (segpic masks --raw, or OUT-raw).")],
    out: Annotated[Path, typer.Option(help="COCO annotation file to write (JSON).")],
    shard: Annotated[
        str | None, typer.Option(help="Export only this shard (part-NNNNN-of-NNNNN.parquet): one file per shard for large sets.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Write RAW's masks as COCO annotations that pycocotools.coco.COCO loads (images, annotations, one category)."""
    from pipeline.coco_export import ExportConfig, export_masks as run_export

    with exit_on_user_error():
        summary = run_export(ExportConfig(raw=raw, out=out, shard=shard, overwrite=overwrite))
    typer.echo(f"{out}: {summary.images} image(s), {summary.annotations} annotation(s)")
