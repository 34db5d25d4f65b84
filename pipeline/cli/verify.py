"""`segpic verify DIR [--masks MASKDIR] [--raw RAWDIR]`: check shards, manifest, checksums, alignment and decoding."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error


def verify(
    images: Annotated[Path, typer.Argument(help="Image shard directory.")],
    masks: Annotated[Path | None, typer.Option(help="Mask shard directory that must align with IMAGES.")] = None,
    raw: Annotated[Path | None, typer.Option(help="Raw mask shard directory that must align with IMAGES.")] = None,
) -> None:
    """Exit 0 when everything checks out, else list every problem and exit 1."""
    from pipeline.verify import VerifyConfig, verify as run_verify

    with exit_on_user_error():
        report = run_verify(VerifyConfig(images=images, masks=masks, raw=raw))
    for problem in report.problems:
        typer.echo(problem, err=True)
    if not report.ok:
        typer.echo(f"verify: {len(report.problems)} problems in {report.shards} shards", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"verify: ok, {report.rows} rows in {report.shards} shards")
