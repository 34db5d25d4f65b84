"""`segpic masks`: label maps and/or raw masks for every image of an image shard directory, as aligned shards."""

import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.file_values import file_settings
from pipeline.cli.generator_settings import parse_settings
from pipeline.cli.timings import TimingsOption, check_outside, write_timings


def masks(
    images: Annotated[Path, typer.Argument(help="Image shard directory (segpic ingest).")],
    out: Annotated[Path | None, typer.Option(help="Mask shard directory to write (same shard names and row order).")] = None,
    generator: Annotated[str, typer.Option(help="sam, sam2, sam3, felzenszwalb, grid or coco-panoptic.")] = "felzenszwalb",
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Generator setting KEY=VALUE or GENERATOR.KEY=VALUE (ignored unless GENERATOR runs), repeatable: "
            "sam.checkpoint=PATH (empty: official file, downloaded and verified), sam.model=vit_b (default: read from "
            "the checkpoint), sam.points_per_side=16 and every AMG setting, sam.mode=fast (bf16, fused attention; "
            "agreement: benchmarks/bench_masks.py), sam.batch_size=4; sam2.checkpoint=PATH, "
            "sam2.model=tiny|small|base_plus|large (default: read from the checkpoint); "
            "sam3.checkpoint=PATH (sam3.pt), sam3.mode=points|concepts, sam3.prompts='person, dog' and every AMG setting; "
            "grid.grid=4; felzenszwalb.scale=400; coco-panoptic.panoptic_dir=DIR; "
            "speck_area, max_regions, min_predicted_iou, min_mask_area, max_masks, rank_masks_by (all: the label-map rule).",
        ),
    ] = None,
    settings: Annotated[
        str | None,
        typer.Option(
            help="Generator settings from a YAML/JSON mapping: FILE, or FILE:DOTTED.KEY for the mapping at that key "
            "(e.g. params.yaml:masks.settings.sam); --set wins over it.",
        ),
    ] = None,
    shard_index: Annotated[int | None, typer.Option(help="This job's index in a job array (with --num-shards).")] = None,
    num_shards: Annotated[int | None, typer.Option(help="Jobs in the job array.")] = None,
    workers: Annotated[int, typer.Option(help="Decoding threads (local) or CPU actors (ray).")] = 2,
    engine: Annotated[str, typer.Option(help="local or ray.")] = "local",
    ray_address: Annotated[
        str,
        typer.Option(help="Ray cluster: ray://HOST:10001 (Ray client) or HOST:6379 on a node; empty starts a local instance."),
    ] = "",
    max_label_map_bytes: Annotated[
        int | None,
        typer.Option(
            help="Record an image as failed, unlabelled, when its label map needs more memory (8 bytes/pixel; default 4 GiB)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (images/s, ETA).")] = True,
    timings: TimingsOption = None,
    devices: Annotated[
        str, typer.Option(help="Local engine: comma-separated devices, one worker process each (cuda:0,cuda:1); sam/sam2 only.")
    ] = "",
    raw: Annotated[
        Path | None,
        typer.Option(help="Raw mask shard directory to write (COCO RLE, for segpic repaint and export-masks); without --out, only these.")
    ] = None,
    keep_raw: Annotated[
        bool | None,
        typer.Option("--keep-raw/--no-raw", help="Keep raw masks beside OUT as OUT-raw (default: for sam, sam2, sam3).")
    ] = None,
) -> None:
    """Write OUT/part-*.parquet mask shards and OUT/manifest.json (and raw masks); re-running resumes."""
    from pipeline.mask_summary import summarize_mask_shards
    from pipeline.masks import MasksConfig, make_masks

    started = time.perf_counter()
    with exit_on_user_error():
        for folder in (out, raw):
            if folder is not None:
                check_outside(timings, folder)
        options = (file_settings(settings) if settings else ()) + parse_settings(setting or [], generator)
        config = MasksConfig(
            images=images,
            out=out,
            generator=generator,
            options=options,
            shard_index=shard_index,
            num_shards=num_shards,
            workers=workers,
            engine=engine,
            ray_address=ray_address,
            **({} if max_label_map_bytes is None else {"max_label_map_bytes": max_label_map_bytes}),
            progress=progress,
            devices=tuple(device.strip() for device in devices.split(",")) if devices else (),
            raw=raw,
            keep_raw=keep_raw,
        )
        summary = make_masks(config)
        write_timings(timings, time.perf_counter() - started, summary.images)
        stats = summarize_mask_shards(out, str(out)) if summary.complete and out is not None else None
    state = ("complete" + (f", {stats.summary()}" if stats else "")) if summary.complete else "incomplete (other jobs pending)"
    kept = f"; raw masks in {summary.raw}" if summary.raw is not None and out is not None else ""
    typer.echo(
        f"{out or summary.raw}: wrote {len(summary.written)} shard(s), {summary.images} image(s), {summary.failed} failed; "
        f"{len(summary.already_done)} shard(s) already done{kept}; set {state}"
    )
    warning = stats.warning() if stats else None
    if warning:
        typer.echo(warning, err=True)
