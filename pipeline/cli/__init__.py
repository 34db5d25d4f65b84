"""The `segpic` command line: this module only assembles the commands defined beside it."""

import typer

from pipeline.cli import about

app = typer.Typer(
    name="segpic",
    help="SegPIC: segmentation masks as privileged information for learned image compression.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("version")(about.version)


@app.callback()
def root() -> None:
    """Keep `segpic` a command group even while it has a single command."""


def main() -> None:
    """Console-script entry point."""
    app()
