"""`segpic train`: train SegPIC (or the WACNN baseline) on image shards, optionally with mask shards.

Its options are the `TrainConfig` fields declared with `model.training.config.option`, built
here from those declarations (name, help, where the default comes from), so a setting is
added in one place; `--masks-root` alone is the command's own (how `--partition NAME` reads).
"""

import inspect
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from model.training.config import RECORDED_SETTINGS, REQUIRED, TrainConfig, command_line_options, preset_config
from pipeline.cli.errors import exit_on_user_error

MASKS_ROOT = inspect.Parameter(
    "masks_root",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[Path | None, typer.Option("--masks-root", help="Folder of mask shard directories named by source.")],
)


def train(**options: Any) -> None:
    """Train with the published objective and write OUT/checkpoint.pt and OUT/metrics.json."""
    from model.training.resume import recorded_settings
    from model.training.trainer import train as run_training

    with exit_on_user_error():
        out, resume = options.pop("out"), options["resume"]
        recorded = recorded_settings(out) if resume else None
        config = preset_config(options.pop("preset"), options.pop("images"), out, recorded, **options)
        result = run_training(config)
    if result.already_finished:
        typer.echo(f"{config.out}: the run is already finished at step {result.step}; nothing changed")
        return
    typer.echo(f"trained to step {result.step}: {config.checkpoint_path}")


def _help(name: str, help_text: str, help_default: str | None) -> str:
    """The option's help, and where an omitted option's value comes from: the preset (values: README, "Train
    on cached shards") or a fixed default, and on --resume the run's own when the checkpoint records it."""
    if help_default is None:
        return help_text
    where = help_default if help_default == REQUIRED else f"default: {help_default}"
    resumed = "; --resume: the run's" if name in RECORDED_SETTINGS else ""
    return f"{help_text} [{where}{resumed}]"


def _parameters() -> list[inspect.Parameter]:
    """The command's options, one per declared `TrainConfig` field (then --masks-root after --partition)."""
    hints = get_type_hints(TrainConfig)
    without_default = {item.name for item in fields(TrainConfig) if item.default is MISSING and item.default_factory is MISSING}
    parameters = []
    for name, declared in command_line_options().items():
        kind = declared.text or hints[name]
        # A flag shows its own default; every other omitted option is None, which the preset or the run fills in.
        # A field without a default whose help promises none (OUT) must be given.
        required = name in without_default and declared.help_default is None
        default = inspect.Parameter.empty if required else (getattr(TrainConfig, name) if kind is bool else None)
        kind = kind if required or kind is bool else kind | None
        names = () if kind is bool else (declared.name(name),)  # typer names a flag --NAME/--no-NAME itself
        option = typer.Option(*names, help=_help(name, declared.help, declared.help_default))
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]))
        if name == "partition":
            parameters.append(MASKS_ROOT)
    return parameters


train.__signature__ = inspect.Signature(_parameters())
