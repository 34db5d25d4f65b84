"""`segpic CMD --help` reads in full in an 80-column terminal and in a pipe: no option name cut short,
no type shown for flags, and options whose default comes from the preset say so."""

import re

import pytest
import typer
from typer.testing import CliRunner

from model.training.config import PRESETS, RECORDED_SETTINGS
from pipeline.cli import app
from wrong_use import run_segpic

COMMANDS = sorted(command.name for command in app.registered_commands)
CONFIG_NAMES = {"n": "N", "m": "M", "workers": "num_workers"}  # option -> TrainConfig field, where they differ
FROM_THE_PRESET = {*PRESETS["tiny"], "arch", "lmbda", "aux_lr", "grid", "seed", "val_count", "nproc", "device", "decoded_cache_mb"}


def option_names(command: str) -> list[str]:
    """Every name of every option of `segpic COMMAND`, as click knows them."""
    group = typer.main.get_command(app)
    # By kind, not class: typer builds its options from a click of its own, no `click.Option` subclass.
    return [name for parameter in group.commands[command].params if parameter.param_type_name == "option" for name in parameter.opts]


def assert_readable(text: str, command: str) -> None:
    assert all(len(line) <= 80 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "…" not in text and "<bool>" not in text
    for name in option_names(command):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (command, name)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_name_is_readable_at_80_columns(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert_readable(result.output, command)


@pytest.mark.parametrize("command", ["masks", "train"])
def test_help_in_a_pipe_is_as_readable(command):
    result = run_segpic(command, "--help", COLUMNS="")
    assert result.returncode == 0, result.stderr
    assert_readable(result.stdout, command)


def test_train_help_says_which_defaults_come_from_the_preset_and_which_a_resume_keeps():
    train = typer.main.get_command(app).commands["train"]
    for parameter in train.params:
        setting = CONFIG_NAMES.get(parameter.name, parameter.name)
        assert ("--resume: the run's]" in (parameter.help or "")) == (setting in RECORDED_SETTINGS), parameter.name
        if setting in FROM_THE_PRESET:
            assert "[default: from --preset" in parameter.help, parameter.name
