"""`segpic train` never corrupts a run: one run per folder, resumes that are the same experiment,
clear one-line refusals, and no writes after the launcher is gone."""

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from model.training.trainer import train
from pipeline.cli import app
from training_runs import checkpoint_step, tiny
from wrong_use import SEGPIC, snapshot



def cli(*arguments: str):
    return CliRunner().invoke(app, ["train", *arguments])


def tiny_cli(images: Path, out: Path, *extra: str) -> list[str]:
    return ["--images", str(images), "--out", str(out), "--preset", "tiny", "--crop", "64", "--batch-size", "2",
            "--no-progress", *extra]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_folder_holding_a_run_needs_resume_or_overwrite(shards, tmp_path):
    config = tiny(shards, tmp_path, masks=False, steps=2)
    first = train(config).summary
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        train(replace(config, steps=3))
    assert snapshot(tmp_path) == before
    assert_one_line_error(cli(*tiny_cli(shards[0], tmp_path, "--steps", "3")), "already holds a run")
    assert snapshot(tmp_path) == before
    again = train(replace(config, steps=3, seed=5, overwrite=True)).summary
    assert again["step"] == 3 and again["weights_hash"] != first["weights_hash"]
    assert series_steps(tmp_path / "live", "train", "loss") == [3]  # nothing left of the first run's series


def test_an_output_path_that_is_a_file_is_refused(shards, tmp_path):
    target = tmp_path / "run"
    target.write_text("notes")
    assert_one_line_error(cli(*tiny_cli(shards[0], target, "--steps", "1")), str(target), "is a file")
    assert target.read_text() == "notes"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param(["--device", "cuda"], "no CUDA GPU", marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="the error of a machine without a CUDA GPU")),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "meta"], "unknown device 'meta'"),
        (["--arch", "wacnn", "--partition", "masks:{masks}"], "wacnn"),
        (["--allow-change", "N"], "--allow-change N"),
        (["--resume", "--overwrite"], "--resume and --overwrite"),
    ],
)
def test_wrong_options_fail_in_one_line_before_anything_is_written(shards, tmp_path, options, named):
    options = [option.format(masks=shards[1]) for option in options]
    assert_one_line_error(cli(*tiny_cli(shards[0], tmp_path / "run", "--steps", "1", *options)), named)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="cuda:7 exists here")
def test_launcher_of_several_processes_checks_the_device_first(shards, tmp_path):
    result = cli(*tiny_cli(shards[0], tmp_path / "run", "--steps", "1", "--nproc", "2", "--device", "cuda:7"))
    assert_one_line_error(result, "cuda:7")


def test_resume_refuses_a_checkpoint_that_is_not_torch_or_holds_pickled_objects(shards, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"this is not a checkpoint")
    result = cli(*tiny_cli(shards[0], tmp_path, "--steps", "1", "--resume"))
    assert_one_line_error(result, str(checkpoint), "not a torch checkpoint")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-4)}, checkpoint)
    result = cli(*tiny_cli(shards[0], tmp_path, "--steps", "1", "--resume"))
    assert_one_line_error(result, str(checkpoint), "pickled Python object (argparse.Namespace)")
    torch.save({"state_dict": {}}, checkpoint)
    assert_one_line_error(cli(*tiny_cli(shards[0], tmp_path, "--steps", "1", "--resume")), "not a resumable")


def test_resume_checks_checkpoint_and_training_state_versions(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=2)
    train(config)
    saved = torch.load(config.checkpoint_path, weights_only=True)
    torch.save({**saved, "format_version": 99}, config.checkpoint_path)
    with pytest.raises(ValueError, match="checkpoint format version 99 is not supported"):
        train(replace(config, steps=3, resume=True))
    torch.save({**saved, "training": {**saved["training"], "format_version": 99}}, config.checkpoint_path)
    with pytest.raises(ValueError, match="training state format version 99 cannot be resumed"):
        train(replace(config, steps=3, resume=True))


def test_resume_refuses_any_change_of_the_experiment(shards, tmp_path):
    config = tiny(shards, tmp_path / "run", steps=2)
    train(config)
    moved_images = tmp_path / "images"
    shutil.copytree(shards[0], moved_images)
    resumed = replace(config, steps=3, resume=True)
    refusals = {
        "lr 0.001 -> 0.0005); to change it deliberately pass --allow-change lr": replace(resumed, lr=5e-4),
        "--allow-change aux_lr": replace(resumed, aux_lr=5e-3),
        "--allow-change images": replace(resumed, images=moved_images),
        "--allow-change partition": replace(resumed, partition=type(config.partition)()),
        "preset cannot change within a run": replace(resumed, preset="paper"),
        "N 24 -> 48); N cannot change": replace(resumed, N=48),
        "--allow-change plateau_patience": replace(resumed, plateau_patience=7),
    }
    before = snapshot(config.out)
    for expected, changed in refusals.items():
        with pytest.raises(ValueError, match="cannot resume") as refusal:
            train(changed)
        assert expected in str(refusal.value)
    assert snapshot(config.out) == before


def test_allowed_changes_take_effect_and_are_recorded(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=2, plateau_patience=100)
    train(config)
    summary = train(replace(config, steps=4, resume=True, lr=3e-4, allow_changes=("lr",))).summary
    assert summary["config"]["lr"] == 3e-4 and summary["in_effect"]["lr"] == 3e-4
    assert summary["changes"] == [{"step": 2, "setting": "lr", "from": config.lr, "to": 3e-4}]
    saved = torch.load(config.checkpoint_path, weights_only=True)["training"]
    assert saved["optimizer"]["param_groups"][0]["lr"] == 3e-4
    assert saved["experiment"]["lr"] == 3e-4 and saved["changes"] == summary["changes"]
    assert json.loads(config.metrics_path.read_text())["changes"] == summary["changes"]
    # The new rate is now the run's own: resuming with it needs no option, the old one is refused.
    assert train(replace(config, steps=5, resume=True, lr=3e-4)).step == 5
    with pytest.raises(ValueError, match="lr"):
        train(replace(config, steps=6, resume=True))


def test_resuming_a_finished_run_writes_nothing_and_says_so(shards, tmp_path):
    config = tiny(shards, tmp_path, steps=2)
    train(config)
    before = snapshot(tmp_path)
    assert train(replace(config, resume=True)).already_finished
    result = cli(*tiny_cli(shards[0], tmp_path, "--partition", f"masks:{shards[1]}", "--steps", "2", "--resume"))
    assert result.exit_code == 0, result.output
    assert "already finished at step 2" in result.output
    assert snapshot(tmp_path) == before


def test_checkpoints_get_the_users_file_permissions(shards, tmp_path):
    previous = os.umask(0o027)
    try:
        train(tiny(shards, tmp_path, masks=False, steps=1))
    finally:
        os.umask(previous)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o640


def series_steps(live: Path, group: str, name: str) -> list[int]:
    with (live / "plots" / "metrics" / group / f"{name}.tsv").open(newline="") as stream:
        return [int(row["step"]) for row in csv.DictReader(stream, delimiter="\t")]


def train_command(images: Path, masks: Path, out: Path, *extra: str) -> list[str]:
    return [SEGPIC, "train", *tiny_cli(images, out, "--partition", f"masks:{masks}", "--steps", "1000", *extra)]


@pytest.mark.slow
def test_killed_and_resumed_run_logs_every_step_once(shards, tmp_path):
    images, masks = shards
    live = tmp_path / "live"
    command = train_command(images, masks, tmp_path, "--checkpoint-every", "4", "--log-every", "1", "--val-every", "2")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill while the series already hold steps the checkpoint does not: the resumed run redoes them.
        # The run is paused before the files are compared, so it cannot move on between check and kill.
        while True:
            assert process.poll() is None, "training exited before it could be killed"
            if (live / "plots").exists() and checkpoint_step(tmp_path / "checkpoint.pt") >= 4:
                process.send_signal(signal.SIGSTOP)
                if series_steps(live, "train", "loss")[-1] > checkpoint_step(tmp_path / "checkpoint.pt"):
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        process.kill()
    finally:
        process.kill()
        process.wait()
    stopped_at = checkpoint_step(tmp_path / "checkpoint.pt")
    assert series_steps(live, "train", "loss")[-1] > stopped_at
    steps = stopped_at + 6
    resume = train_command(images, masks, tmp_path, "--checkpoint-every", "4", "--log-every", "1", "--val-every", "2",
                           "--resume")
    resume[resume.index("1000")] = str(steps)
    subprocess.run(resume, check=True, capture_output=True)
    for name in ("loss", "bpp", "psnr", "lr"):
        assert series_steps(live, "train", name) == list(range(1, steps + 1)), name
    assert series_steps(live, "val", "loss") == list(range(2, steps + 1, 2))
    assert json.loads((live / "metrics.json").read_text())["step"] == steps


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.slow
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_the_launcher_stops_every_worker(shards, tmp_path, kill_signal):
    images, masks = shards
    command = train_command(images, masks, tmp_path, "--nproc", "2", "--device", "cpu", "--checkpoint-every", "2",
                            "--val-every", "2")
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while checkpoint_step(tmp_path / "checkpoint.pt") < 2:
            assert launcher.poll() is None, "training exited before it could be killed"
            time.sleep(0.2)
        workers = descendants(launcher.pid)
        assert len([w for w in workers if "multiprocessing" in " ".join(w.cmdline())]) >= 2
        launcher.send_signal(kill_signal)
    finally:
        launcher.wait()
    launcher_gone = time.time_ns()
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"workers outlived the launcher: {[w.pid for w in alive]}"
    time.sleep(1)
    written_after = [path for path in tmp_path.rglob("*") if path.stat().st_mtime_ns > launcher_gone]
    assert not written_after, f"written after the launcher was gone: {written_after}"
