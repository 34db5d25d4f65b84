"""A SAM-family study through DVC: the network runs once, a label-map rule key re-runs only the repaint.

The study repository (like `test_dvc_pipeline.py`'s) holds the project's dvc.yaml and code and
runs SAM 2.1 `tiny`, the published architecture, from a checkpoint file of random weights that
the test writes in Meta's layout: the stage loads and hashes it as it would the real file. One
small photo keeps the network pass to seconds on a CPU; only the mask stages are reproduced,
the training stages are listed (dry run) as what a rule change re-runs after the repaint.
"""

import json

import pytest
import torch
import yaml
from PIL import Image

from pipeline.generators.sam_family.sam2.generator import build_sam21
from pipeline.manifest import read_manifest
from pipeline.shards import list_shards, read_rows
from random_sams import photo
from dvc_study import LAMBDAS, PROJECT, edit_params, run, stages_run

GENERATOR = "sam2"
SETTINGS, NETWORK, REPAINT = f"mask-settings@{GENERATOR}", f"masks@{GENERATOR}", f"repaint@{GENERATOR}"
TRAINED_ON_IT = {f"train@{GENERATOR}-{lmbda}" for lmbda in LAMBDAS} | {f"eval@{GENERATOR}", "compare"}


@pytest.fixture(scope="module")
def sam_study(tmp_path_factory):
    """A git+DVC study of one photo with a random-weight SAM 2.1 tiny checkpoint, reproduced up to its label maps."""
    outside = tmp_path_factory.mktemp("outside")
    torch.manual_seed(0)
    checkpoint = outside / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_sam21("tiny", torch.device("cpu")).state_dict()}, checkpoint)
    (outside / "photos").mkdir()
    Image.fromarray(photo(1, 96)).save(outside / "photos" / "chelsea.png")
    repo = tmp_path_factory.mktemp("sam-study")
    for name in ("dvc.yaml", ".dvcignore"):
        (repo / name).write_text((PROJECT / name).read_text())
    for package in ("pipeline", "model"):
        run(["cp", "-r", str(PROJECT / package), str(repo / package)], repo)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["ingest"]["source"] = str(outside / "photos")
    params["masks"]["generators"] = [GENERATOR]
    params["masks"]["settings"][GENERATOR] = {
        "model": "tiny", "checkpoint": str(checkpoint), "points_per_side": 2,
        "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "max_regions": 16,
    }
    params["train"]["lambdas"] = LAMBDAS
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGPIC_CACHE", str(outside / "cache"))
        for command in (["git", "init", "-q"], ["git", "config", "user.name", "test"], ["git", "config", "user.email", "t@e.st"]):
            run(command, repo)
        run(["dvc", "init", "-q", "--force"], repo)
        run(["dvc", "config", "core.analytics", "false"], repo)
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "study"], repo)
        (repo / "first-repro.log").write_text(run(["dvc", "repro", REPAINT], repo))
        yield repo


def raw_bytes(study) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in list_shards(study / "data" / "raw" / GENERATOR)}


def changed(study, *stages: str) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json", *stages], study, with_stderr=False)))


@pytest.mark.slow
def test_the_network_runs_once_into_kept_raw_masks(sam_study):
    assert stages_run((sam_study / "first-repro.log").read_text()) == {"ingest", SETTINGS, NETWORK, REPAINT}
    raw = sam_study / "data" / "raw" / GENERATOR
    assert read_manifest(raw).kind == "raw-masks" and len(next(read_rows(list_shards(raw)[0]))["masks"]) > 1
    assert read_manifest(sam_study / "data" / "masks" / GENERATOR).settings["rule"]["max_regions"] == 16


@pytest.mark.slow
def test_exp_run_with_a_rule_key_reruns_the_repaint_and_what_trains_on_it_not_the_network(sam_study):
    before = raw_bytes(sam_study)
    output = run(["dvc", "exp", "run", "-S", f"masks.settings.{GENERATOR}.max_regions=2", REPAINT], sam_study)
    assert stages_run(output) == {SETTINGS, REPAINT}
    assert raw_bytes(sam_study) == before
    labels = sam_study / "data" / "masks" / GENERATOR
    assert read_manifest(labels).settings["rule"]["max_regions"] == 2
    assert all(row["num_regions"] <= 2 for path in list_shards(labels) for row in read_rows(path))
    downstream = stages_run(run(["dvc", "repro", "--dry", "--force", "--downstream", REPAINT], sam_study))
    assert downstream == {REPAINT} | TRAINED_ON_IT


@pytest.mark.slow
def test_a_network_key_marks_the_network_stage(sam_study):
    original = (sam_study / "params.yaml").read_text()
    try:
        edit_params(sam_study, lambda params: params["masks"]["settings"][GENERATOR].update(max_regions=3))
        run(["dvc", "repro", "--single-item", SETTINGS], sam_study)
        assert changed(sam_study, SETTINGS, NETWORK, REPAINT) == {REPAINT}
        edit_params(sam_study, lambda params: params["masks"]["settings"][GENERATOR].update(points_per_side=3))
        run(["dvc", "repro", "--single-item", SETTINGS], sam_study)
        assert changed(sam_study, SETTINGS, NETWORK, REPAINT) == {NETWORK, REPAINT}
    finally:
        (sam_study / "params.yaml").write_text(original)
