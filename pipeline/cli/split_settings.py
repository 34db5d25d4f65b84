"""`segpic split-settings FILE:KEY --network N.json --rule R.json`: a generator's settings, network and rule apart.

A study's settings block (`params.yaml:masks.settings.sam`) mixes what the network pass depends
on and what only the label-map rule reads. DVC tracks a block as a whole, so the study's first
masks step writes the two parts to files of their own: the raw-mask stage depends on the
network part and the repaint stage on the rule part, and changing `max_regions` re-runs the
repaint, not the network. Keys are written sorted, so reordering the block changes nothing.
"""

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import exit_on_user_error
from pipeline.cli.file_values import file_settings


def split_settings(
    settings: Annotated[str, typer.Argument(help="Settings mapping: FILE or FILE:DOTTED.KEY (e.g. params.yaml:masks.settings.sam).")],
    network: Annotated[Path, typer.Option(help="JSON file for the generator's own settings (segpic masks --settings).")],
    rule: Annotated[Path, typer.Option(help="JSON file for the label-map rule settings (segpic repaint --settings).")],
) -> None:
    """Write the generator's settings and the label-map rule's settings of one block to two JSON files."""
    from pipeline.atomic_files import write_bytes_atomically
    from pipeline.label_maps import split_rule_settings

    with exit_on_user_error():
        parts = split_rule_settings(file_settings(settings))
        for path, part in zip((network, rule), parts):
            write_bytes_atomically(path, (json.dumps(part, indent=2, sort_keys=True) + "\n").encode())
    typer.echo(f"{network}: {len(parts[0])} network setting(s); {rule}: {len(parts[1])} rule setting(s)")
