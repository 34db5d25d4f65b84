"""`segpic train`: train SegPIC (or the WACNN baseline) on image shards, optionally with mask shards."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error


def _preset(help_text: str, kept: bool = True) -> str:
    """`help_text` and where the option's default comes from: the --preset (values: README, "Train on cached
    shards"), and (`kept`) on --resume the run's own."""
    resumed = "; --resume: the run's" if kept else ""
    return f"{help_text} [default: from --preset{resumed}]"


def _kept(help_text: str, default: str) -> str:
    """`help_text` of an option that a resumed run takes from its checkpoint when not given."""
    return f"{help_text} [default: {default}; --resume: the run's]"


def train(
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint.pt, metrics.json, live/ plots.")],
    images: Annotated[
        Path | None, typer.Option(help="Image shard directory (segpic ingest). [required; --resume: the run's]")
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option(
            help=_kept("'grid' (no masks), 'masks:DIR' (aligned mask shards) or NAME (= masks:MASKS_ROOT/NAME).", "grid")
        ),
    ] = None,
    masks_root: Annotated[Path | None, typer.Option(help="Folder of mask shard directories named by source.")] = None,
    preset: Annotated[
        str | None, typer.Option(help=_kept("'paper' (published sizes) or 'tiny' (CPU smoke runs).", "paper"))
    ] = None,
    arch: Annotated[str | None, typer.Option(help=_preset("Architecture: segpic or wacnn."))] = None,
    lmbda: Annotated[
        float | None, typer.Option(help=_preset("Rate-distortion trade-off λ (loss = λ·255²·MSE + bpp)."))
    ] = None,
    crop: Annotated[int | None, typer.Option(help=_preset("Training crop size (multiple of 64)."))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_preset("Crops per step and process."))] = None,
    steps: Annotated[
        int | None, typer.Option(help=_preset("Optimiser steps to train to (counting resumed ones)."))
    ] = None,
    n: Annotated[int | None, typer.Option("--N", help=_preset("Width N of the 1/4- and 1/16-scale features."))] = None,
    m: Annotated[int | None, typer.Option("--M", help=_preset("Width M of the latent y."))] = None,
    lr: Annotated[float | None, typer.Option(help=_preset("Main Adam learning rate."))] = None,
    aux_lr: Annotated[
        float | None, typer.Option(help=_preset("Adam learning rate of the bottlenecks' quantiles."))
    ] = None,
    grid: Annotated[
        int | None,
        typer.Option(help=_preset("Prototype grid g (g×g regions) of the grid partition and of validation.")),
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_preset("Seed of initialisation, order and crops."))] = None,
    workers: Annotated[
        int | None, typer.Option(help=_preset("DataLoader worker processes (at most one per CPU core).", kept=False))
    ] = None,
    decoded_cache_mb: Annotated[
        int | None, typer.Option(help=_preset("Decoded-image cache per loader process (MiB).", kept=False))
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help=_kept(
                "Warm start from this checkpoint's weights (fresh optimisers, step 0); {lmbda} in it stands for "
                "the run's λ (tiny-grid-{lmbda}.pth.tar); empty: random initialisation.",
                "none",
            )
        ),
    ] = None,
    val_images: Annotated[Path | None, typer.Option(help=_kept("Separate validation image shards.", "none"))] = None,
    val_masks: Annotated[Path | None, typer.Option(help=_kept("Mask shards aligned with --val-images.", "none"))] = None,
    val_count: Annotated[
        int | None, typer.Option(help=_preset("Images held out for validation without --val-images."))
    ] = None,
    val_every: Annotated[int | None, typer.Option(help=_preset("Validate every this many steps."))] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help=_preset("Write the resumable checkpoint every this many steps."))
    ] = None,
    log_every: Annotated[int | None, typer.Option(help=_preset("Log training means every this many steps."))] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when it exists.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the run already in OUT and start afresh.")] = False,
    allow_change: Annotated[
        list[str] | None,
        typer.Option(help="With --resume: a setting that may differ from the checkpoint's (e.g. lr); repeatable."),
    ] = None,
    nproc: Annotated[int | None, typer.Option(help=_preset("Local processes (DDP); under torchrun leave at 1."))] = None,
    device: Annotated[str | None, typer.Option(help=_preset("auto, cpu, cuda or cuda:N.", kept=False))] = None,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast; entropy models, GDN and likelihoods stay float32.")] = False,
    channels_last: Annotated[bool, typer.Option(help="Channels-last memory layout for the network.")] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the network (first steps pay the compilation).")] = False,
    threads: Annotated[int | None, typer.Option(help=_preset("torch CPU threads per process.", kept=False))] = None,
    live_dir: Annotated[Path | None, typer.Option(help="dvclive directory (default OUT/live).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train with the published objective and write OUT/checkpoint.pt and OUT/metrics.json."""
    from model.training.config import parse_partition, preset_config
    from model.training.resume import recorded_settings
    from model.training.trainer import train as run_training

    with exit_on_user_error():
        config = preset_config(
            preset,
            images,
            out,
            recorded_settings(out) if resume else None,
            partition=None if partition is None else parse_partition(partition, masks_root),
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
