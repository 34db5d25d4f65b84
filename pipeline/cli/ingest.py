"""`segpic ingest SOURCE --out DIR`: a folder, a Hugging Face dataset, Parquet or `sample` -> image shards."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.timings import TimingsOption, check_outside, write_timings
from pipeline.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageLimits
from pipeline.shards import DEFAULT_ROW_GROUP_BYTES, DEFAULT_SHARD_BYTES


def ingest(
    source: Annotated[
        str,
        typer.Argument(help="An image folder, `hf:NAME[:SPLIT]`, a Parquet file/folder (or `parquet:PATH`), or `sample` / `sample-eval` (offline photos: training, evaluation)."),
    ],
    out: Annotated[Path, typer.Option(help="Shard directory to write (part-NNNNN-of-NNNNN.parquet + manifest.json).")],
    shard_bytes: Annotated[
        int, typer.Option(help="Close a shard once it holds this many image bytes.")
    ] = DEFAULT_SHARD_BYTES,
    row_group_bytes: Annotated[
        int, typer.Option(help="Parquet row-group size in image bytes.")
    ] = DEFAULT_ROW_GROUP_BYTES,
    max_pixels: Annotated[int, typer.Option(help="Reject larger images (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    min_side: Annotated[int, typer.Option(help="Reject images with a shorter side.")] = DEFAULT_MIN_SIDE,
    limit: Annotated[int | None, typer.Option(help="Only the first LIMIT images of the source.")] = None,
    shard_index: Annotated[
        int | None, typer.Option(help="Job-array mode: this job writes part-I-of-N (records j with j % N == I).")
    ] = None,
    num_shards: Annotated[int | None, typer.Option(help="Job-array mode: total number of shards/jobs N.")] = None,
    workers: Annotated[int, typer.Option(help="Threads decoding and validating images.")] = 2,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (images/s).")] = True,
    timings: TimingsOption = None,
) -> None:
    """Write SOURCE as image shards in OUT; re-running the same command resumes or does nothing."""
    from pipeline.ingest import IngestConfig, ingest as run_ingest

    with exit_on_user_error():
        check_outside(timings, out)
        config = IngestConfig(
            source=source,
            out=out,
            shard_bytes=shard_bytes,
            row_group_bytes=row_group_bytes,
            limits=ImageLimits(max_pixels=max_pixels, min_side=min_side),
            limit=limit,
            shard_index=shard_index,
            num_shards=num_shards,
            workers=workers,
            progress=progress,
        )
        summary = run_ingest(config)
        write_timings(timings, summary.seconds, summary.written)
    typer.echo(summary.line())
