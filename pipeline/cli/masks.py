"""`segpic masks`: label maps for every image of an image shard directory, as aligned mask shards."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.masks import MasksConfig, make_masks


def _parse_settings(settings: list[str], generator: str) -> tuple[tuple[str, str], ...]:
    """`KEY=VALUE` (or `GENERATOR.KEY=VALUE`, kept only when GENERATOR runs) -> pairs.

    The scoped form lets one command template (a DVC matrix) carry every generator's
    settings; the generator's config converts and checks the values it receives.
    """
    pairs = []
    for setting in settings:
        key, equals, value = setting.partition("=")
        scope, dot, name = key.strip().rpartition(".")
        if not equals or not name or (dot and not scope):
            raise ValueError(f"--set expects KEY=VALUE or GENERATOR.KEY=VALUE, got {setting!r}")
        if not dot or scope == generator:
            pairs.append((name.replace("-", "_"), value.strip()))
    return tuple(pairs)


def masks(
    images: Annotated[Path, typer.Argument(help="Image shard directory (segpic ingest).")],
    out: Annotated[Path, typer.Option(help="Mask shard directory to write (same shard names and row order).")],
    generator: Annotated[str, typer.Option(help="sam, sam2, felzenszwalb, grid or coco-panoptic.")] = "felzenszwalb",
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Generator setting KEY=VALUE or GENERATOR.KEY=VALUE (ignored unless GENERATOR runs), repeatable: "
            "sam.model=vit_b, sam.checkpoint=PATH (empty: official file, downloaded and verified), sam.points_per_side=16 "
            "and every AMG setting, sam.mode=fast (bf16, fused attention; agreement: benchmarks/bench_masks.py), "
            "sam.batch_size=4; sam2.model=tiny|small|base_plus|large, sam2.checkpoint=PATH; grid.grid=4; felzenszwalb.scale=400; coco-panoptic.panoptic_dir=DIR; "
            "speck_area, max_regions (all).",
        ),
    ] = None,
    shard_index: Annotated[int | None, typer.Option(help="This job's index in a job array (with --num-shards).")] = None,
    num_shards: Annotated[int | None, typer.Option(help="Jobs in the job array.")] = None,
    workers: Annotated[int, typer.Option(help="Decoding threads (local) or CPU actors (ray).")] = 2,
    engine: Annotated[str, typer.Option(help="local or ray.")] = "local",
    ray_address: Annotated[str, typer.Option(help="Ray cluster address; empty starts a local instance.")] = "",
    progress: Annotated[bool, typer.Option(help="Show a progress bar (images/s, ETA).")] = True,
    devices: Annotated[
        str, typer.Option(help="Local engine: comma-separated devices, one worker process each (cuda:0,cuda:1); sam/sam2 only.")
    ] = "",
) -> None:
    """Write OUT/part-*.parquet mask shards and OUT/manifest.json; re-running resumes."""
    with exit_on_user_error():
        config = MasksConfig(
            images=images,
            out=out,
            generator=generator,
            options=_parse_settings(setting or [], generator),
            shard_index=shard_index,
            num_shards=num_shards,
            workers=workers,
            engine=engine,
            ray_address=ray_address,
            progress=progress,
            devices=tuple(device.strip() for device in devices.split(",")) if devices else (),
        )
        summary = make_masks(config)
    state = "complete" if summary.complete else "incomplete (other jobs pending)"
    typer.echo(
        f"{out}: wrote {len(summary.written)} shard(s), {summary.images} image(s), {summary.failed} failed; "
        f"{len(summary.already_done)} shard(s) already done; set {state}"
    )
