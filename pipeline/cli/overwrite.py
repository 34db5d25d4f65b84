"""`--overwrite` of the commands that write a file the user names (`pipeline.atomic_files.refuse_to_replace`)."""

from typing import Annotated

import typer

OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the output file when it exists (refused otherwise).")]
