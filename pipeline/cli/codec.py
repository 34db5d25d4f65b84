"""`segpic compress` / `segpic decompress`: one image to a `.segpic` file and back."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.errors import exit_on_user_error

if TYPE_CHECKING:
    from model.bitstream import CodingReport

CheckpointOption = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Codec checkpoint (ours or the published layout).")
]


def _report(report: "CodingReport") -> str:
    return (
        f"{report.output}: {report.width}x{report.height}, {report.file_bytes} bytes, "
        f"{report.bits_per_pixel:.4f} bpp, {report.seconds:.2f} s"
    )


def compress(
    image: Annotated[Path, typer.Argument(help="Image to code (PNG, JPEG, ...).")],
    checkpoint: CheckpointOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .segpic file.")],
    grid: Annotated[int, typer.Option(help="Prototype grid g (g×g regions).")] = 4,
) -> None:
    """Code IMAGE into a .segpic file and print its rate and coding time."""
    from model.bitstream import CompressConfig, compress_image_file

    with exit_on_user_error():
        report = compress_image_file(CompressConfig(image, checkpoint, output, grid))
    typer.echo(_report(report))


def decompress(
    segpic_file: Annotated[Path, typer.Argument(help="A .segpic file.")],
    checkpoint: CheckpointOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write (format from the suffix, e.g. .png).")],
) -> None:
    """Decode a .segpic file with the model that wrote it and print its rate and decoding time."""
    from model.bitstream import DecompressConfig, decompress_image_file

    with exit_on_user_error():
        report = decompress_image_file(DecompressConfig(segpic_file, checkpoint, output))
    typer.echo(_report(report))
