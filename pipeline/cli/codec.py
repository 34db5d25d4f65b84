"""`segpic compress` / `segpic decompress`: one image to a `.segpic` file and back;
`segpic export`: a checkpoint in the published SegPIC layout."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.atomic_files import refuse_to_replace
from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.overwrite import OverwriteOption

if TYPE_CHECKING:
    from model.bitstream import CodingReport

CheckpointOption = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Codec checkpoint (ours or the published layout).")
]
DeviceOption = Annotated[str, typer.Option(help="Device for the network: cpu, cuda, cuda:N or auto.")]


def _report(report: "CodingReport") -> str:
    return (
        f"{report.output}: {report.width}x{report.height}, {report.mode} mode, {report.file_bytes} bytes, "
        f"{report.bits_per_pixel:.4f} bpp counting every byte of the file "
        f"({report.stream_bits_per_pixel:.4f} bpp in the coded streams alone), {report.seconds:.2f} s"
    )


def compress(
    image: Annotated[Path, typer.Argument(help="Image to code (PNG, JPEG, TIFF, ...).")],
    checkpoint: CheckpointOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .segpic file.")],
    grid: Annotated[int, typer.Option(help="Prototype grid g (g×g regions).")] = 4,
    published_compatible: Annotated[
        bool,
        typer.Option(
            "--published-compatible",
            help="Code as the published code does (faster; decodes reliably only where the encoder's "
            "numerics are reproduced) instead of in portable mode.",
        ),
    ] = False,
    device: DeviceOption = "cpu",
    overwrite: OverwriteOption = False,
) -> None:
    """Code IMAGE into a .segpic file and print its rate and coding time."""
    from model.bitstream import CompressConfig, compress_image_file

    with exit_on_user_error():
        refuse_to_replace([output], overwrite)
        report = compress_image_file(
            CompressConfig(image, checkpoint, output, grid, portable=not published_compatible, device=device)
        )
    typer.echo(_report(report))


def decompress(
    segpic_file: Annotated[Path, typer.Argument(help="A .segpic file.")],
    checkpoint: CheckpointOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write (format from the suffix, e.g. .png).")],
    max_pixels: Annotated[
        int | None,
        typer.Option(min=1, help="Refuse files claiming more pixels than this (protects memory; default 2^25, an 8K frame)."),
    ] = None,
    device: DeviceOption = "cpu",
    overwrite: OverwriteOption = False,
) -> None:
    """Decode a .segpic file with the model that wrote it and print its rate and decoding time."""
    from model.bitstream import DecompressConfig, decompress_image_file

    with exit_on_user_error():
        refuse_to_replace([output], overwrite)
        limit = {} if max_pixels is None else {"max_pixels": max_pixels}
        report = decompress_image_file(DecompressConfig(segpic_file, checkpoint, output, device=device, **limit))
    typer.echo(_report(report))


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A SegPIC checkpoint (ours or the published layout).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the published-layout file.")],
    overwrite: OverwriteOption = False,
) -> None:
    """Write CHECKPOINT's weights as the published SegPIC files are laid out."""
    from model.export import export_published_checkpoint

    with exit_on_user_error():
        refuse_to_replace([output], overwrite)
        export_published_checkpoint(checkpoint, output)
    typer.echo(f"{output}: published-layout SegPIC checkpoint written")
