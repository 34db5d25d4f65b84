"""`segpic train --init`: a run starts from trained weights, and a wrong warm start changes nothing."""

import json

import pytest
from typer.testing import CliRunner

from model.checkpoints import save_official_checkpoint, weights_hash
from model.training import distributed
from model.training.config import preset_config
from model.training.trainer import open_session
from pipeline.cli import app

from random_codecs import random_segpic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """A tiny SegPIC of other weights than a fresh run's, in the published layout, named for λ 0.013."""
    folder = tmp_path_factory.mktemp("warm_start")
    model = random_segpic(7, N=24, M=40)
    save_official_checkpoint(folder / "tiny-grid-0.013.pth.tar", model)
    return folder / "tiny-grid-0.013.pth.tar", model


def started_weights(config) -> str:
    session = open_session(config, distributed.start("cpu"))
    try:
        assert session.progress.step == 0
        return weights_hash(session.model)  # every weight, coder tables aside
    finally:
        distributed.stop(session.group)


def test_a_warm_started_run_begins_with_the_given_weights(sample_image_shards, tmp_path, warm_start):
    path, model = warm_start
    config = preset_config("tiny", sample_image_shards, tmp_path, init=path, progress=False)
    assert started_weights(config) == weights_hash(model)
    assert started_weights(preset_config("tiny", sample_image_shards, tmp_path, progress=False)) != weights_hash(model)


def test_lmbda_in_the_init_path_names_the_runs_own_warm_start(sample_image_shards, tmp_path, warm_start):
    template = warm_start[0].parent / "tiny-grid-{lmbda}.pth.tar"
    config = preset_config("tiny", sample_image_shards, tmp_path, init=template, lmbda=0.013)
    assert config.init == warm_start[0]
    assert config.experiment()["init"] == str(warm_start[0].resolve())


def run_cli(*args):
    return CliRunner().invoke(app, ["train", *map(str, args)])


@pytest.mark.parametrize(("init", "message"), [
    ("missing.pth.tar", "missing.pth.tar: no such checkpoint file"),
    ("wide", "holds segpic(N=24, M=40), but this run trains segpic(N=32, M=40)"),
])
def test_a_wrong_warm_start_is_one_line_and_leaves_the_run_folder_alone(
    sample_image_shards, tmp_path, warm_start, init, message
):
    out = tmp_path / "run"
    assert run_cli("--images", sample_image_shards, "--out", out, "--preset", "tiny", "--steps", 1,
                   "--no-progress").exit_code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    path = warm_start[0] if init == "wide" else tmp_path / init
    result = run_cli("--images", sample_image_shards, "--out", out, "--preset", "tiny", "--N", 32 if init == "wide" else 24,
                     "--init", path, "--overwrite", "--no-progress")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


def test_a_resumed_run_keeps_its_warm_start(sample_image_shards, tmp_path, warm_start):
    """The warm start is part of the experiment: left out on resume it is kept, another one is refused."""
    out = tmp_path / "run"
    common = ("--images", sample_image_shards, "--out", out, "--preset", "tiny", "--no-progress")
    assert run_cli(*common, "--steps", 1, "--init", warm_start[0]).exit_code == 0
    assert run_cli(*common, "--steps", 2, "--resume").exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["init"] == str(warm_start[0])
    other = tmp_path / "other.pth.tar"
    other.write_bytes(warm_start[0].read_bytes())
    refused = run_cli(*common, "--steps", 3, "--init", other, "--resume")
    assert refused.exit_code == 1 and "init" in refused.output and "cannot resume" in refused.output
