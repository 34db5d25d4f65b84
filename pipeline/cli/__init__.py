"""The `segpic` command line: this module only assembles the commands defined beside it."""

import typer

from pipeline.cli import about
from pipeline.cli import codec
from pipeline.cli import ingest
from pipeline.cli import mask_stats
from pipeline.cli import masks
from pipeline.cli import repaint
from pipeline.cli import split_settings
from pipeline.cli import evaluate
from pipeline.cli import export_masks
from pipeline.cli import train
from pipeline.cli import verify

app = typer.Typer(
    name="segpic",
    help="SegPIC: segmentation masks as privileged information for learned image compression.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.command("version")(about.version)
app.command("train")(train.train)
app.command("compress")(codec.compress)
app.command("decompress")(codec.decompress)
app.command("export")(codec.export)
app.command("ingest")(ingest.ingest)
app.command("verify")(verify.verify)
app.command("eval")(evaluate.eval_command)
app.command("compare")(evaluate.compare_command)
app.command("mask-stats")(mask_stats.mask_stats)
app.command("masks")(masks.masks)
app.command("repaint")(repaint.repaint)
app.command("export-masks")(export_masks.export_masks)
app.command("split-settings")(split_settings.split_settings)


def main() -> None:
    """Console-script entry point."""
    app()
