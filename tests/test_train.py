"""`segpic train`: the loss goes down, runs resume exactly, non-finite losses are contained."""

import math
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.architectures import build_model
from model.checkpoints import load_codec
from model.training import distributed
from model.training.config import Partition, parse_partition
from model.training.crops import centre_window
from model.training.decoding import decode_image
from model.training.metrics import MetricsLog
from model.training.objective import rate_distortion
from model.training.state import capture_rng, restore_rng
from model.training.trainer import NonFiniteGuard, NonFiniteLossError, open_session, save_checkpoint, train, train_loop, train_step
from pipeline.cli import app
from pipeline.sample import sample_photo_paths
from training_runs import checkpoint_step, tiny


def fixed_crops_loss(model: torch.nn.Module, lmbda: float) -> float:
    """Objective of a model on centre crops of three sample photos (grid path, eval mode)."""
    crops = []
    for path in sample_photo_paths()[:3]:
        pixels = decode_image(path.read_bytes(), path.name)
        crops.append(centre_window(*pixels.shape[:2], 64).apply(pixels))
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return rate_distortion(model.eval()(images), images, lmbda).loss.item()


def test_tiny_training_lowers_the_loss_on_the_sample(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=30, val_every=30, checkpoint_every=30)
    torch.manual_seed(config.seed)
    untrained = build_model(config.arch, **config.model_args)
    summary = train(config).summary
    trained = load_codec(config.checkpoint_path)
    assert summary["step"] == 30 and summary["nonfinite_steps"] == 0
    assert fixed_crops_loss(trained, config.lmbda) < 0.5 * fixed_crops_loss(untrained, config.lmbda)


def test_a_run_writes_checkpoint_metrics_and_dvclive_plots(shards, tmp_path):
    summary = train(tiny(shards, tmp_path, masks=False, steps=2)).summary
    assert (tmp_path / "checkpoint.pt").is_file()
    assert (tmp_path / "metrics.json").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "val" / "psnr.tsv").is_file()
    assert set(summary["train"]) >= {"loss", "bpp", "mse", "psnr", "lr"}
    assert math.isfinite(summary["val"]["loss"])


def test_wacnn_baseline_trains_through_the_same_loop(shards, tmp_path):
    summary = train(tiny(shards, tmp_path, masks=False, arch="wacnn", steps=2)).summary
    assert type(load_codec(tmp_path / "checkpoint.pt")).__name__ == "WACNN"
    assert math.isfinite(summary["train"]["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_and_resumed_run_ends_with_the_same_weights(shards, tmp_path, workers):
    straight = tiny(shards, tmp_path / "straight", steps=6)
    train(straight)
    interrupted = tiny(shards, tmp_path / "interrupted", steps=3, num_workers=workers)
    train(interrupted)
    train(replace(interrupted, steps=6, resume=True))
    assert_same_run(straight.checkpoint_path, interrupted.checkpoint_path)


def assert_same_run(expected_path: Path, resumed_path: Path) -> None:
    expected = torch.load(expected_path, weights_only=True)
    resumed = torch.load(resumed_path, weights_only=True)
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    assert expected["training"]["progress"] == resumed["training"]["progress"]
    assert expected["training"]["scheduler"] == resumed["training"]["scheduler"]
    assert torch.equal(expected["training"]["rng"]["torch"], resumed["training"]["rng"]["torch"])


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(shards, tmp_path):
    straight = tiny(shards, tmp_path / "straight", steps=10)
    train(straight)
    killed = tiny(shards, tmp_path / "killed", steps=10)
    command = [str(Path(sys.executable).parent / "segpic"), "train", "--images", str(shards[0]), "--out", str(killed.out),
               "--preset", "tiny", "--partition", f"masks:{shards[1]}", "--crop", "64", "--batch-size", "2",
               "--steps", "1000", "--val-every", "2", "--checkpoint-every", "2", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while checkpoint_step(killed.checkpoint_path) < 4:
            assert process.poll() is None, "training exited before it could be killed"
            time.sleep(0.2)
        process.kill()
    finally:
        process.wait()
    stopped_at = checkpoint_step(killed.checkpoint_path)
    assert stopped_at < 10
    train(replace(killed, resume=True))
    assert_same_run(straight.checkpoint_path, killed.checkpoint_path)


def test_resuming_a_finished_run_changes_nothing_and_still_reports(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=2)
    first = train(config).summary
    again = train(replace(config, resume=True)).summary
    assert again["step"] == 2 and again["weights_hash"] == first["weights_hash"]
    assert again["val"] == first["val"]


def test_resume_refuses_a_changed_experiment(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=2)
    train(config)
    with pytest.raises(ValueError, match="lmbda"):
        train(replace(config, steps=4, resume=True, lmbda=0.05))


def test_non_finite_step_is_skipped_without_touching_the_weights(shards, tmp_path):
    session = open_session(tiny(shards, tmp_path), distributed.start("cpu"))
    before = {name: value.clone() for name, value in session.model.state_dict().items()}
    poisoned = {"image": torch.full((2, 3, 64, 64), float("nan")), "label_map": torch.zeros(2, 64, 64, dtype=torch.int64)}
    assert train_step(session, poisoned) is None
    for name, value in session.model.state_dict().items():
        assert torch.equal(before[name], value), name


def test_guard_stops_after_consecutive_non_finite_losses_only(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"good")
    guard = NonFiniteGuard(limit=3, checkpoint=tmp_path / "checkpoint.pt")
    for finite in (False, False, True, False, False):
        guard.record(finite, step=1)
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses.*kept at .*checkpoint.pt"):
        guard.record(False, step=6)


def test_cli_reports_a_diverged_run_in_one_line(shards, tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", "--images", str(shards[0]), "--out", str(tmp_path), "--preset", "tiny", "--lmbda", "nan",
         "--crop", "64", "--batch-size", "2", "--no-progress"],
    )
    assert result.exit_code == 1
    assert "10 consecutive non-finite losses" in result.output and "Traceback" not in result.output


def test_repeated_non_finite_losses_stop_the_run_and_keep_the_last_good_checkpoint(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=20, max_nonfinite=3)
    session = open_session(config, distributed.start("cpu"))
    save_checkpoint(session)
    good = config.checkpoint_path.read_bytes()
    session.config = replace(config, lmbda=float("nan"))
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        train_loop(session, None)
    assert session.progress.nonfinite_steps == 3
    assert config.checkpoint_path.read_bytes() == good


def test_partition_names_resolve_under_a_masks_root(tmp_path):
    assert parse_partition("grid", tmp_path) == Partition()
    assert parse_partition("felzenszwalb", tmp_path) == Partition(tmp_path / "felzenszwalb")
    assert parse_partition("masks:/data/sam") == Partition(Path("/data/sam"))
    with pytest.raises(ValueError, match="partition"):
        parse_partition("felzenszwalb")


def test_cli_trains_from_mask_root_and_reports_the_checkpoint(shards, tmp_path):
    images, masks = shards
    result = CliRunner().invoke(
        app,
        ["train", "--images", str(images), "--out", str(tmp_path), "--preset", "tiny", "--masks-root", str(masks.parent),
         "--partition", masks.name, "--steps", "2", "--crop", "64", "--batch-size", "2", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "checkpoint.pt") in result.output


def test_cli_reports_a_bad_partition_in_one_line(shards, tmp_path):
    result = CliRunner().invoke(app, ["train", "--images", str(shards[0]), "--out", str(tmp_path), "--partition", "sam"])
    assert result.exit_code == 1
    assert "partition" in result.output


def test_metrics_in_a_git_repository_without_commits_fail_in_one_clear_line(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="git repository with no commits yet"):
        MetricsLog(tmp_path / "live", resume_at=None)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": capture_rng()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
