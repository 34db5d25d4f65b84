"""Each training option is declared once (a `TrainConfig` field's `Option`): `segpic train` offers exactly
those, and both DVC training stages pass every one with a study key, from that key of params.yaml, to the
same config field."""

import json
import re
import shlex

import typer
import yaml
from typer.testing import CliRunner

from import_graph import PROJECT
from model.training.config import command_line_options
from pipeline.cli import app

TRAINING_STAGES = ("train", "train-grid")
STUDY_OPTIONS = {name: declared for name, declared in command_line_options().items() if declared.study}
FREE_FORM = "extra_args"  # any other `segpic train` options, appended as they are


def stage(name: str) -> dict:
    definition = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][name]
    return definition.get("do", definition)


def passed_settings(cmd: str) -> dict[str, str]:
    """Option -> the `train.KEY` a stage's command passes it as (the free-form options aside)."""
    return {option: key for option, key in re.findall(r'(--[\w-]+) "?\$\{train\.(\w+)\}"?', cmd) if key != FREE_FORM}


def test_the_command_offers_exactly_the_declared_options():
    command = typer.main.get_command(app).commands["train"]
    offered = {name for parameter in command.params if parameter.param_type_name == "option" for name in parameter.opts}
    assert offered == {declared.name(name) for name, declared in command_line_options().items()} | {"--masks-root"}


def test_both_training_stages_pass_every_study_option_and_track_its_key():
    expected = {declared.name(name): declared.study for name, declared in STUDY_OPTIONS.items()}
    for name in TRAINING_STAGES:
        assert passed_settings(stage(name)["cmd"]) == expected, name
        assert sorted(stage(name)["params"]) == sorted([f"train.{key}" for key in expected.values()] + [f"train.{FREE_FORM}"]), name


def test_every_study_key_of_params_yaml_is_a_declared_option():
    keys = set(yaml.safe_load((PROJECT / "params.yaml").read_text())["train"]) - {"lambdas", FREE_FORM}
    assert keys == {declared.study for declared in STUDY_OPTIONS.values()}


def test_the_study_settings_reach_their_config_fields_through_the_stage_command(sample_image_shards, tmp_path):
    """The grid baseline's command with study values unlike any default: each lands in its own field."""
    study = {
        "preset": "tiny", "arch": "segpic", "N": 48, "M": 80, "crop": 64, "batch": 3, "steps": 2, "lr": 0.002,
        "aux_lr": 0.003, "grid": 2, "val_count": 2, "seed": 7, "nproc": 1, "init": "", FREE_FORM: "--val-every 2",
    }
    values = {f"train.{key}": value for key, value in study.items()}
    values |= {"paths.images": sample_image_shards, "paths.train": tmp_path, "item": 0.05}
    cmd = re.sub(r"\$\{([\w.]+)\}", lambda match: str(values[match[1]]), stage("train-grid")["cmd"])
    result = CliRunner().invoke(app, shlex.split(cmd)[1:])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "grid" / "0.05" / "metrics.json").read_text())["config"]
    for name, declared in STUDY_OPTIONS.items():
        expected = None if study[declared.study] == "" else study[declared.study]
        assert recorded[name] == expected, name
    assert recorded["lmbda"] == 0.05 and recorded["partition"] == "grid" and recorded["val_every"] == 2
