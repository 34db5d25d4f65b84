"""`segpic train`: train SegPIC (or the WACNN baseline) on image shards, optionally with mask shards."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error


def train(
    images: Annotated[Path, typer.Option(help="Image shard directory.")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint.pt, metrics.json, live/ plots.")],
    partition: Annotated[
        str, typer.Option(help="'grid' (no masks), 'masks:DIR' (aligned mask shards) or NAME (= masks:MASKS_ROOT/NAME).")
    ] = "grid",
    masks_root: Annotated[Path | None, typer.Option(help="Folder of mask shard directories named by source.")] = None,
    preset: Annotated[str, typer.Option(help="'paper' (published sizes) or 'tiny' (CPU smoke runs).")] = "paper",
    arch: Annotated[str | None, typer.Option(help="Architecture: segpic or wacnn.")] = None,
    lmbda: Annotated[float | None, typer.Option(help="Rate-distortion trade-off λ (loss = λ·255²·MSE + bpp).")] = None,
    crop: Annotated[int | None, typer.Option(help="Training crop size (multiple of 64).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Crops per step and process.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps to train to (counting resumed ones).")] = None,
    n: Annotated[int | None, typer.Option("--N", help="Width N of the 1/4- and 1/16-scale features.")] = None,
    m: Annotated[int | None, typer.Option("--M", help="Width M of the latent y.")] = None,
    lr: Annotated[float | None, typer.Option(help="Main Adam learning rate.")] = None,
    aux_lr: Annotated[float | None, typer.Option(help="Adam learning rate of the bottlenecks' quantiles.")] = None,
    grid: Annotated[int | None, typer.Option(help="Prototype grid g (g×g regions) of the grid partition and of validation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of initialisation, order and crops.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    decoded_cache_mb: Annotated[int | None, typer.Option(help="Decoded-image cache per loader process (MiB).")] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Warm start from this checkpoint's weights (fresh optimisers, step 0); {lmbda} in it stands for "
            "the run's λ (tiny-grid-{lmbda}.pth.tar); empty: random initialisation."
        ),
    ] = None,
    val_images: Annotated[Path | None, typer.Option(help="Separate validation image shards.")] = None,
    val_masks: Annotated[Path | None, typer.Option(help="Mask shards aligned with --val-images.")] = None,
    val_count: Annotated[int | None, typer.Option(help="Images held out for validation without --val-images.")] = None,
    val_every: Annotated[int | None, typer.Option(help="Validate every this many steps.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Write the resumable checkpoint every this many steps.")] = None,
    log_every: Annotated[int | None, typer.Option(help="Log training means every this many steps.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when it exists.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the run already in OUT and start afresh.")] = False,
    allow_change: Annotated[
        list[str] | None,
        typer.Option(help="With --resume: a setting that may differ from the checkpoint's (e.g. lr); repeatable."),
    ] = None,
    nproc: Annotated[int | None, typer.Option(help="Local processes (DDP); under torchrun leave at 1.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast; entropy models, GDN and likelihoods stay float32.")] = False,
    channels_last: Annotated[bool, typer.Option(help="Channels-last memory layout for the network.")] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the network (first steps pay the compilation).")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads per process.")] = None,
    live_dir: Annotated[Path | None, typer.Option(help="dvclive directory (default OUT/live).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train with the published objective and write OUT/checkpoint.pt and OUT/metrics.json."""
    from model.training.config import parse_partition, preset_config
    from model.training.trainer import train as run_training

    with exit_on_user_error():
        config = preset_config(
            preset,
            images,
            out,
            partition=parse_partition(partition, masks_root),
            arch=arch,
            lmbda=lmbda,
            crop=crop,
            batch_size=batch_size,
            steps=steps,
            N=n,
            M=m,
            lr=lr,
            aux_lr=aux_lr,
            grid=grid,
            seed=seed,
            num_workers=workers,
            decoded_cache_mb=decoded_cache_mb,
            init=Path(init) if init else None,
            val_images=val_images,
            val_masks=val_masks,
            val_count=val_count,
            val_every=val_every,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            resume=resume,
            overwrite=overwrite,
            allow_changes=tuple(name.strip() for value in allow_change or () for name in value.split(",") if name.strip()),
            nproc=nproc,
            device=device,
            bf16=bf16,
            channels_last=channels_last,
            compile=compile,
            threads=threads,
            live_dir=live_dir,
            progress=progress,
        )
        summary = run_training(config)
    if summary.get("already_finished"):
        typer.echo(f"{config.out}: the run is already finished at step {summary['step']}; nothing changed")
        return
    typer.echo(f"trained to step {summary['step']}: {config.checkpoint_path}")
