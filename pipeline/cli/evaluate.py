"""`segpic eval` (checkpoints on an image set -> results JSON) and `segpic compare` (BD-rate table and RD plot)."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.atomic_files import refuse_to_replace
from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.overwrite import OverwriteOption


def _stderr(line: str) -> None:
    typer.echo(line, err=True)


def eval_command(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(help="Checkpoints, one RD point each (ours or published); with --names-from, one folder of run folders."),
    ],
    images: Annotated[Path, typer.Option(help="Folder of image files (PNG, JPEG, ...) or of image shards.")],
    out: Annotated[Path, typer.Option(help="Results JSON to write (CompressAI eval_model layout + per-image rows).")],
    name: Annotated[str | None, typer.Option(help="Curve name in the results (default: OUT's stem).")] = None,
    entropy_estimation: Annotated[
        bool, typer.Option("--entropy-estimation", help="Rate from likelihoods in a forward pass, no bitstreams.")
    ] = False,
    reconstructions: Annotated[
        Path | None, typer.Option(help="Write decoded images as PNG under DIR/<checkpoint>/.")
    ] = None,
    bitstreams: Annotated[Path | None, typer.Option(help="Keep the .segpic files under DIR/<checkpoint>/.")] = None,
    grid: Annotated[int, typer.Option(help="Prototype grid g (g×g regions) at test time.")] = 4,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    names_from: Annotated[
        str | None,
        typer.Option(
            help="FILE:DOTTED.KEY listing the runs of the study (e.g. params.yaml:train.lambdas): evaluate "
            "FOLDER/NAME/checkpoint.pt for each, leaving other run folders out.",
        ),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Compress and decompress every image with every checkpoint; print the averaged RD points."""
    from model.evaluation.run import EvalConfig, evaluate
    from pipeline.cli.file_values import named_folders, read_names

    with exit_on_user_error():
        refuse_to_replace([out], overwrite)
        if names_from:
            if len(checkpoints) != 1:
                raise ValueError("--names-from takes one folder of run folders, not several checkpoints")
            names = read_names(names_from, "--names-from")
            runs, left_out = named_folders(checkpoints[0], names, names_from, "run folder")
            for line in left_out:
                _stderr(line)
            checkpoints = [run / "checkpoint.pt" for run in runs]
        config = EvalConfig(
            tuple(checkpoints), images, out, name, entropy_estimation, reconstructions, bitstreams, grid, device
        )
        document = evaluate(config, progress=_stderr)
    results = document["results"]
    for index, entry in enumerate(document["checkpoints"]):
        typer.echo(
            f"{entry['label']}: {results['bpp'][index]:.4f} bpp, {results['psnr-rgb'][index]:.2f} dB PSNR "
            f"(enc {results['encoding_time'][index]:.2f} s, dec {results['decoding_time'][index]:.2f} s)"
        )
    typer.echo(f"wrote {out}")


def compare_command(
    results: Annotated[
        list[str],
        typer.Argument(help="Results JSON files, folders of them (segpic eval --out) and/or reference curves (ref:segpic, ref:wacnn)."),
    ],
    anchor: Annotated[str, typer.Option(help="Curve everything is compared with: a results `name` or ref:<key>.")],
    out: Annotated[Path, typer.Option(help="Folder for bdrate.json, bdrate.md, rd.png and rd_points.csv.")],
    method: Annotated[
        str, typer.Option(help="Bjøntegaard interpolation: akima, pchip (JCT-VC CTC sheet) or cubic (VCEG-M33).")
    ] = "akima",
    min_overlap: Annotated[
        float, typer.Option(help="Share of their joint range two curves must both cover for a BD value.")
    ] = 0.75,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the images for the 95 % intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    names_from: Annotated[
        str | None,
        typer.Option(
            help="FILE:DOTTED.KEY listing the curves of the study (e.g. params.yaml:masks.generators); results "
            "found in folders under other names are left out, saying so. The anchor always counts.",
        ),
    ] = None,
) -> None:
    """BD-rate of each curve against the anchor (PSNR and MS-SSIM) with 95 % intervals, as a table and an RD plot."""
    from model.bd_bootstrap import BootstrapSettings
    from model.compare import CompareConfig, ComparisonSettings, CurveSelection, run_comparison
    from pipeline.cli.file_values import read_names

    with exit_on_user_error():
        selection = CurveSelection(read_names(names_from, "--names-from"), names_from) if names_from else None
        settings = ComparisonSettings(method, min_overlap, BootstrapSettings(resamples, seed))
        outputs = run_comparison(CompareConfig(tuple(results), anchor, out, settings, selection))
    for line in outputs.left_out:
        _stderr(line)
    typer.echo(outputs.table_markdown.read_text(encoding="utf-8"))
    typer.echo(f"wrote {outputs.table_json}, {outputs.table_markdown}, {outputs.plot}, {outputs.points}")
