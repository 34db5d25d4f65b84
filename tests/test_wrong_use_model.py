"""A new user's slips in the model stage, through `segpic`: resumes keep what the run was told, single-file
outputs are replaced only when asked, and the published preset fits the machine it runs on."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from model.checkpoints import save_codec
from pipeline.cli import app
from pipeline.masks import MasksConfig, make_masks
from pipeline.sample import sample_photo_paths
from random_codecs import random_segpic
from wrong_use import lines_of, one_error_line, run_segpic, snapshot

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_run(images, out, *extra: str) -> list[str]:
    return ["train", "--images", str(images), "--out", str(out), "--preset", "tiny", "--batch-size", "2", "--no-progress", *extra]


def test_a_resume_keeps_the_runs_settings_accepted_changes_included(sample_image_shards, tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, tiny_run(sample_image_shards, run, "--steps", "2")).exit_code == 0
    result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--steps", "3", "--lr", "0.0005", "--allow-change", "lr", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert lines_of(result.stderr) == [f"{run}: resuming at step 2 of 3; lr 0.001 -> 0.0005"]
    # Neither the rate, nor the preset, batch size or images need repeating: the run's own are kept.
    result = runner.invoke(app, ["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert lines_of(result.stderr) == [f"{run}: resuming at step 3 of 4"]
    assert lines_of(result.stdout) == [f"trained to step 4: {run / 'checkpoint.pt'}"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["lr"] == 0.0005 and metrics["in_effect"]["lr"] == 0.0005 and metrics["config"]["batch_size"] == 2
    assert metrics["changes"] == [{"step": 2, "setting": "lr", "from": 0.001, "to": 0.0005}]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["training"]["experiment"]["lr"] == 0.0005
    # Going back to the old rate is a change like any other, refused without a trace.
    before = snapshot(run)
    refused = runner.invoke(app, ["train", "--out", str(run), "--resume", "--steps", "5", "--lr", "0.001", "--no-progress"])
    one_error_line(refused, "lr 0.0005 -> 0.001")
    assert snapshot(run) == before


def test_the_paper_preset_starts_no_more_loader_workers_than_cores(sample_image_shards, tmp_path):
    """On one core torch's worker warning (twice, train and validation loaders) would otherwise open the run."""
    command = ["train", "--images", str(sample_image_shards), "--out", str(tmp_path / "run"), "--preset", "paper",
               "--N", "24", "--M", "40", "--crop", "64", "--batch-size", "2", "--steps", "1", "--no-progress"]
    result = run_segpic(*command, timeout=300, one_core=True)
    assert result.returncode == 0, result.stderr
    assert "worker" not in result.stderr, result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["num_workers"] == 1


@pytest.fixture(scope="module")
def codec_files(tmp_path_factory, sample_image_shards):
    """A tiny codec checkpoint, a small photo, its .segpic file and a mask shard folder: inputs of every file-writing command."""
    folder = tmp_path_factory.mktemp("inputs")
    checkpoint = folder / "tiny.pt"
    save_codec(checkpoint, random_segpic(0), "segpic", {"N": 24, "M": 40})
    photos = folder / "photos"
    photos.mkdir()
    shutil.copy(sample_photo_paths()[6], photos / "hubble.jpg")
    coded = folder / "hubble.segpic"
    assert runner.invoke(app, ["compress", str(photos / "hubble.jpg"), "-c", str(checkpoint), "-o", str(coded)]).exit_code == 0
    make_masks(MasksConfig(images=sample_image_shards, out=folder / "grid", generator="grid"))
    return {"checkpoint": checkpoint, "photos": photos, "coded": coded, "masks": folder / "grid"}


COMMANDS = {
    "export": lambda files, target: ["export", str(files["checkpoint"]), "-o", str(target)],
    "compress": lambda files, target: ["compress", str(files["photos"] / "hubble.jpg"), "-c", str(files["checkpoint"]), "-o", str(target)],
    "decompress": lambda files, target: ["decompress", str(files["coded"]), "-c", str(files["checkpoint"]), "-o", str(target)],
    "eval": lambda files, target: ["eval", str(files["checkpoint"]), "--images", str(files["photos"]), "--out", str(target)],
    "mask-stats": lambda files, target: ["mask-stats", str(files["masks"]), "--out", str(target)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_writing_one_file_replaces_it_only_with_overwrite(command, codec_files, tmp_path):
    target = tmp_path / ("out.png" if command == "decompress" else "out.json" if command in ("eval", "mask-stats") else "out.bin")
    target.write_bytes(b"keep me")
    arguments = COMMANDS[command](codec_files, target)
    one_error_line(runner.invoke(app, arguments), f"{target} already exists: pass --overwrite to replace it")
    assert target.read_bytes() == b"keep me" and sorted(path.name for path in tmp_path.iterdir()) == [target.name]
    result = runner.invoke(app, [*arguments, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert target.read_bytes() != b"keep me"
