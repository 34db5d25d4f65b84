"""`segpic version`: what is installed, for bug reports and manifests."""

from importlib.metadata import version as package_version

import typer

REPORTED_PACKAGES = ("segpic", "torch", "compressai", "segment-anything", "datasets", "pyarrow", "numpy")


def version() -> None:
    """Print the versions of segpic and of the libraries that shape its outputs."""
    for name in REPORTED_PACKAGES:
        typer.echo(f"{name} {package_version(name)}")
