"""The study runs through DVC itself: a reduced copy of dvc.yaml/params.yaml on a few small photos.

The study repository holds its own copy of the code and of the committed warm starts, which
its stages run (PYTHONPATH), so editing a module there is what it would be in the project:
DVC sees the declared code change. It trains on three sample photos and is evaluated on
five others (the study's own held-out kind), at three of the default study's λ values.
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.cli import app
from pipeline.sample import evaluation_photo_paths, sample_photo_paths
from dvc_study import LAMBDAS, PROJECT, edit_params, run, stages_run
from stage_code import command_files

SOURCE = "felzenszwalb"
INGEST = {"ingest", "ingest-eval"}
SETTINGS = {f"mask-settings@{SOURCE}"}
MASKS = {f"masks@{SOURCE}"}
REPAINT = {f"repaint@{SOURCE}"}
TRAIN_MASKS = {f"train@{SOURCE}-{lmbda}" for lmbda in LAMBDAS}
TRAIN_GRID = {f"train-grid@{lmbda}" for lmbda in LAMBDAS}
EVAL = {f"eval@{SOURCE}", "eval-grid"}
ALL_STAGES = INGEST | SETTINGS | MASKS | REPAINT | TRAIN_MASKS | TRAIN_GRID | EVAL | {"compare"}


def stages_to_run(study: Path, first: set[str] = frozenset()) -> set[str]:
    """What `dvc repro` would run now: the stages `dvc status` finds changed, and all downstream of them.

    (A dry run lists only the first: it cannot know which outputs will change.) The stages
    `first` are run before looking (the cheap settings stages, whose outputs decide what the
    rest depends on) and are not listed.
    """
    if first:
        run(["dvc", "repro", "--single-item", *sorted(first)], study)
    changed = sorted(json.loads(run(["dvc", "status", "--json"], study, with_stderr=False)))
    if not changed:
        return set()
    return stages_run(run(["dvc", "repro", "--dry", "--force", "--downstream", *changed], study))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A fresh git+DVC repo holding the project's pipeline and code, pointed at three small photos, reproduced once."""
    repo = tmp_path_factory.mktemp("study")
    for folder, paths, size in (("photos", sample_photo_paths()[:3], (128, 96)),
                                ("held-out", evaluation_photo_paths()[:5], (192, 176))):
        (repo / folder).mkdir()
        for path in paths:
            with Image.open(path) as image:
                image.convert("RGB").resize(size).save(repo / folder / f"{path.stem}.png")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT / name, repo / name)
    for package in ("pipeline", "model", "data/warm_start"):
        shutil.copytree(PROJECT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["ingest"]["source"] = str(repo / "photos")
    params["eval"]["source"] = str(repo / "held-out")
    params["masks"]["generators"] = [SOURCE]
    params["train"].update(lambdas=LAMBDAS, steps=3, batch=2, val_count=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    (repo / ".dvcignore").unlink()
    run(["dvc", "init", "-q"], repo)
    shutil.copy(PROJECT / ".dvcignore", repo / ".dvcignore")
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)  # dvclive needs a repository with at least one commit
    run(["git", "commit", "-qm", "study"], repo)
    first = run(["dvc", "repro"], repo)
    (repo / "first-repro.log").write_text(first)
    return repo


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def test_each_stage_depends_on_exactly_the_code_its_commands_run():
    commands = {command.name: command.callback for command in app.registered_commands}
    for name, stage in dvc_stages().items():
        stage = stage.get("do", stage)
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        runs = set().union(*(command_files(commands[cmd.split()[1]]) for cmd in cmds))
        declared = [Path(dep) for dep in stage["deps"] if "${" not in dep]
        for path in declared:
            assert (PROJECT / path).exists(), f"{name} depends on {path}, which does not exist"
        missing = {path for path in runs if not any(path == dep or dep in path.parents for dep in declared)}
        assert not missing, f"stage {name} runs code it does not depend on: {sorted(map(str, missing))}"
        unused = {dep for dep in declared if dep.suffix in ("", ".py") and not any(path == dep or dep in path.parents for path in runs)}
        assert not unused, f"stage {name} depends on code it does not run: {sorted(map(str, unused))}"


def test_the_grid_baseline_reads_no_mask_shards():
    train_grid = dvc_stages()["train-grid"]["do"]
    assert "--partition grid" in train_grid["cmd"]
    assert not any("paths.masks" in dep for dep in train_grid["deps"])


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_the_comparison(study):
    assert stages_run((study / "first-repro.log").read_text()) == ALL_STAGES
    for source in (SOURCE, "grid"):
        for lmbda in LAMBDAS:
            assert (study / "data" / "train" / source / str(lmbda) / "checkpoint.pt").is_file()
    compare = study / "data" / "compare"
    for name in ("bdrate.json", "bdrate.md", "rd.png", "rd_points.csv", "mask_stats.json", "mask_stats.md"):
        assert (compare / name).stat().st_size > 0, name
    assert SOURCE in (compare / "bdrate.md").read_text()


@pytest.mark.slow
def test_a_normal_run_prints_no_warnings(study):
    assert "Warning" not in (study / "first-repro.log").read_text()


@pytest.mark.slow
def test_second_repro_does_nothing_and_status_is_clean(study):
    assert stages_run(run(["dvc", "repro"], study)) == set()
    assert "up to date" in run(["dvc", "status"], study)


@pytest.mark.slow
def test_data_stage_outputs_are_reproducible_and_timings_kept_apart(study):
    manifests = [study / "data" / folder / "manifest.json" for folder in ("images", f"raw/{SOURCE}", f"masks/{SOURCE}")]
    for manifest in manifests:
        assert "seconds" not in manifest.read_text(), manifest
    for name in ("ingest", f"masks-{SOURCE}", f"repaint-{SOURCE}"):
        timings = json.loads((study / "data" / "timings" / f"{name}.json").read_text())
        assert timings["seconds"] > 0 and timings["images"] == 3
    # Running the data stages again from scratch gives the same bytes: nothing downstream is invalidated.
    data_stages = ["ingest", f"mask-settings@{SOURCE}", f"masks@{SOURCE}", f"repaint@{SOURCE}"]
    assert stages_run(run(["dvc", "repro", "--force", "--single-item", *data_stages], study)) == set(data_stages)
    assert "up to date" in run(["dvc", "status"], study)


def test_every_parameter_reaches_a_stage():
    """Each key of params.yaml is in a stage's command (so a change alters it) or in its declared params."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    text = (PROJECT / "dvc.yaml").read_text()
    used = set(re.findall(r"\$\{([\w.]+)\}", text))
    used |= {f"masks.settings.{name}" for name in params["masks"]["settings"] if "masks.settings.${item.generator}" in text}
    unused = {key for key in _leaves(params) if not any(key == name or key.startswith(f"{name}.") for name in used)}
    assert unused == set()


@pytest.mark.slow
def test_only_the_settings_stage_tracks_a_generators_settings_block(study):
    lock = yaml.safe_load((study / "dvc.lock").read_text())["stages"]
    tracked = {name: [key for key in stage.get("params", {}).get("params.yaml", {}) if key.startswith("masks.settings")]
               for name, stage in lock.items()}
    assert {name: keys for name, keys in tracked.items() if keys} == {f"mask-settings@{SOURCE}": [f"masks.settings.{SOURCE}"]}


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of a nested dict's leaves (a dict-valued param counts through its leaves)."""
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys += _leaves(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return keys


@pytest.mark.slow
def test_a_generator_setting_marks_only_its_own_stages(study):
    original = (study / "params.yaml").read_text()
    try:
        edit_params(study, lambda params: params["masks"]["settings"][SOURCE].update(scale=300.0))
        assert stages_to_run(study) == SETTINGS | MASKS | REPAINT | TRAIN_MASKS | {f"eval@{SOURCE}", "compare"}
        assert stages_to_run(study, first=SETTINGS) == MASKS | REPAINT | TRAIN_MASKS | {f"eval@{SOURCE}", "compare"}
        restore_params(study, original)
        edit_params(study, lambda params: params["masks"]["settings"][SOURCE].update(max_regions=64))
        assert stages_to_run(study, first=SETTINGS) == REPAINT | TRAIN_MASKS | {f"eval@{SOURCE}", "compare"}  # not the generator
        restore_params(study, original)
        edit_params(study, lambda params: params["masks"]["settings"]["sam"].update(points_per_side=16))
        assert stages_to_run(study) == set()
    finally:
        restore_params(study, original)


def restore_params(study: Path, original: str) -> None:
    """Put params.yaml back, and the settings stages' outputs with it (a test may have run them on an edit)."""
    (study / "params.yaml").write_text(original)
    run(["dvc", "repro", "--single-item", *SETTINGS], study)


@pytest.mark.slow
def test_editing_code_marks_the_stages_that_run_it(study):
    for module, marked in [
        ("model/rat.py", TRAIN_MASKS | TRAIN_GRID | EVAL | {"compare"}),
        ("model/training/objective.py", TRAIN_MASKS | TRAIN_GRID | EVAL | {"compare"}),
        ("pipeline/generators/felzenszwalb.py", MASKS | REPAINT | TRAIN_MASKS | {f"eval@{SOURCE}", "compare"}),
        ("pipeline/repaint.py", REPAINT | TRAIN_MASKS | {f"eval@{SOURCE}", "compare"}),
        ("model/bdrate.py", {"compare"}),
    ]:
        path = study / module
        original = path.read_text()
        try:
            path.write_text(original + "\n# edited\n")
            assert stages_to_run(study) == marked, module
        finally:
            path.write_text(original)
    assert stages_to_run(study) == set()


@pytest.mark.slow
def test_metrics_are_declared(study):
    shown = run(["dvc", "metrics", "show"], study)
    assert "bdrate.json" in shown and "metrics.json" in shown and "ingest.json" in shown


@pytest.mark.slow
def test_changing_one_parameter_reruns_only_the_affected_stages(study):
    original = (study / "params.yaml").read_text()
    try:
        edit_params(study, lambda params: params["eval"].update(grid=2))
        assert stages_to_run(study) == EVAL | {"compare"}
        edit_params(study, lambda params: params["train"].update(crop=128))
        assert stages_to_run(study) == TRAIN_MASKS | TRAIN_GRID | EVAL | {"compare"}
    finally:
        (study / "params.yaml").write_text(original)


@pytest.mark.slow
def test_exp_run_sets_a_training_key(study):
    target = f"train-grid@{LAMBDAS[0]}"
    output = run(["dvc", "exp", "run", "-S", "train.steps=4", target], study)
    assert target in stages_run(output)
    metrics = json.loads((study / "data" / "train" / "grid" / str(LAMBDAS[0]) / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["config"]["steps"] == 4


def _curves(study: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((study / "data" / "eval").glob("*.json"))}


@pytest.mark.slow
def test_the_study_is_evaluated_on_images_no_model_trained_on(study):
    trained = {path.stem for path in (study / "photos").iterdir()}
    for name, document in _curves(study).items():
        evaluated = {row["image"] for row in document["per_image"]}
        assert len(evaluated) == 5 and not {Path(image).stem for image in evaluated} & trained, name


@pytest.mark.slow
def test_every_curve_of_the_study_rises_with_lambda(study):
    """Warm-started from grid-trained weights of each λ, even three fine-tuning steps give RD curves."""
    for name, document in _curves(study).items():
        lambdas = [entry["lmbda"] for entry in document["checkpoints"]]
        assert sorted(lambdas) == LAMBDAS, name
        order = sorted(range(len(lambdas)), key=lambdas.__getitem__)
        bpp = [document["results"]["bpp"][i] for i in order]
        psnr = [document["results"]["psnr-rgb"][i] for i in order]
        assert bpp == sorted(bpp) and len(set(bpp)) == len(bpp), (name, bpp)
        assert psnr == sorted(psnr) and len(set(psnr)) == len(psnr), (name, psnr)
        assert bpp[-1] >= 2 * bpp[0], (name, bpp)


@pytest.mark.slow
def test_the_comparison_gives_bd_values_with_intervals(study):
    table = json.loads((study / "data" / "compare" / "bdrate.json").read_text())
    assert table["method"] == "akima" and [row["curve"] for row in table["rows"]] == ["felzenszwalb", "grid"]
    psnr = next(row for row in table["rows"] if row["curve"] == SOURCE)
    assert psnr["results"]["psnr"]["bd_rate_percent"] is not None, psnr["results"]["psnr"]["note"]
    low, high = psnr["uncertainty"]["psnr"]["bd_rate_interval"]
    assert low <= psnr["results"]["psnr"]["bd_rate_percent"] <= high
    assert psnr["uncertainty"]["psnr"]["bd_rate_verdict"] in {"fewer bits", "more bits", "within noise"}


@pytest.mark.slow
def test_switching_mask_sources_leaves_the_old_source_out_of_the_comparison(study, tmp_path):
    """felzenszwalb -> coco-panoptic, and the study cut to one λ: the earlier curve, masks and runs stay in data/,
    but not in the study's tables (run last)."""
    panoptic = tmp_path / "panoptic"
    panoptic.mkdir()
    for photo in (study / "photos").iterdir():
        segments = np.zeros((96, 128, 3), dtype=np.uint8)
        segments[:, :64, 0], segments[:, 64:, 0] = 1, 2
        Image.fromarray(segments).save(panoptic / photo.name)

    def switch(params):
        params["masks"]["generators"] = ["coco-panoptic"]
        params["masks"]["settings"]["coco-panoptic"] = {"panoptic_dir": str(panoptic)}
        params["train"]["lambdas"] = LAMBDAS[:1]

    edit_params(study, switch)
    output = run(["dvc", "repro"], study)
    assert {f"masks@coco-panoptic", f"eval@coco-panoptic", "compare"} <= stages_run(output)
    assert (study / "data" / "eval" / f"{SOURCE}.json").is_file() and (study / "data" / "masks" / SOURCE).is_dir()
    assert f"left out data/eval/{SOURCE}.json: {SOURCE} is not in params.yaml:masks.generators" in output
    for lmbda in LAMBDAS[1:]:
        assert f"left out data/train/grid/{lmbda}: {lmbda} is not in params.yaml:train.lambdas" in output
    assert [entry["lmbda"] for entry in json.loads((study / "data" / "eval" / "grid.json").read_text())["checkpoints"]] == LAMBDAS[:1]
    table = json.loads((study / "data" / "compare" / "bdrate.json").read_text())
    assert [row["curve"] for row in table["rows"]] == ["coco-panoptic", "grid"]
    assert SOURCE not in (study / "data" / "compare" / "bdrate.md").read_text()
    assert list(json.loads((study / "data" / "compare" / "mask_stats.json").read_text())) == ["coco-panoptic"]
