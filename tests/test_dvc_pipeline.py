"""The study runs through DVC itself: a reduced copy of dvc.yaml/params.yaml on a few small photos."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.sample import sample_photo_paths

PROJECT = Path(__file__).resolve().parents[1]
LAMBDAS = [0.0018, 0.0067, 0.025, 0.0483]  # four points: the fewest a cubic BD-rate fit accepts


def run(args: list[str], cwd: Path) -> str:
    """Run a command with this interpreter's environment first on PATH; fail with its output."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A fresh git+DVC repo holding the project's pipeline, pointed at three small photos, reproduced once."""
    repo = tmp_path_factory.mktemp("study")
    photos = repo / "photos"
    photos.mkdir()
    for path in sample_photo_paths()[:3]:
        with Image.open(path) as image:
            image.convert("RGB").resize((128, 96)).save(photos / f"{path.stem}.png")
    shutil.copy(PROJECT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["ingest"]["source"] = str(photos)
    params["masks"]["generators"] = ["felzenszwalb", "grid"]
    params["train"]["lambdas"] = LAMBDAS
    params["train"]["extra_args"] = "--steps 3 --batch-size 2 --val-count 1"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)  # dvclive needs a repository with at least one commit
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "study"], repo)
    first = run(["dvc", "repro"], repo)
    (repo / "first-repro.log").write_text(first)
    return repo


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_the_comparison(study):
    ran = stages_run((study / "first-repro.log").read_text())
    expected_train = {f"train@{source}-{lmbda}" for source in ("felzenszwalb", "grid") for lmbda in LAMBDAS}
    assert {"ingest", "masks@felzenszwalb", "masks@grid", "eval@felzenszwalb", "eval@grid", "compare"} | expected_train <= ran
    for source in ("felzenszwalb", "grid"):
        for lmbda in LAMBDAS:
            assert (study / "data" / "train" / source / str(lmbda) / "checkpoint.pt").is_file()
    compare = study / "data" / "compare"
    for name in ("bdrate.json", "bdrate.md", "rd.png", "rd_points.csv", "mask_stats.json", "mask_stats.md"):
        assert (compare / name).stat().st_size > 0, name
    assert "felzenszwalb" in (compare / "bdrate.md").read_text()


@pytest.mark.slow
def test_second_repro_does_nothing_and_status_is_clean(study):
    assert stages_run(run(["dvc", "repro"], study)) == set()
    assert "up to date" in run(["dvc", "status"], study)


@pytest.mark.slow
def test_metrics_are_declared(study):
    shown = run(["dvc", "metrics", "show"], study)
    assert "bdrate.json" in shown and "metrics.json" in shown


@pytest.mark.slow
def test_changing_one_parameter_reruns_only_the_affected_stages(study):
    params_path = study / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["eval"]["grid"] = 2
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(run(["dvc", "repro"], study)) == {"eval@felzenszwalb", "eval@grid", "compare"}
