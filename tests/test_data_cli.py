"""The data-stage commands: quick to start (no torch, no CompressAI, none of the codec), settings from a
params file, timings kept out of the shard directories."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.manifest import MANIFEST_NAME, MANIFEST_VERSION, read_manifest
from pipeline.sample import sample_photo_paths
from pipeline.shards import read_rows

HEAVY_PACKAGES = {"compressai", "torch"}
# `segpic train`'s options are declared once, on `model.training.config.TrainConfig` (standard library only),
# and every command's options are built at start-up: that module and its packages are all of `model` allowed.
TRAINING_OPTIONS = {"model", "model.training", "model.training.config"}
IMPORTS_AFTER = """
import sys
from pipeline.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
heavy = {{name.split(".")[0] for name in sys.modules}} & {heavy!r}
codec = {{name for name in sys.modules if name.split(".")[0] == "model"}} - {options!r}
print(",".join(sorted(heavy | codec)))
""".format(heavy=HEAVY_PACKAGES, options=TRAINING_OPTIONS)


def imports_after(args: list[str], cwd: Path) -> str:
    """The heavy top-level packages a fresh interpreter holds after running `segpic ARGS`, comma-separated."""
    result = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_photo_paths()[:2]:
        with Image.open(path) as image:
            image.convert("RGB").resize((96, 64)).save(folder / f"{path.stem}.png")
    return folder


def test_data_stage_commands_load_neither_the_model_nor_compressai(photos, tmp_path):
    shards, masks = tmp_path / "shards", tmp_path / "masks"
    assert imports_after(["ingest", str(photos), "--out", str(shards), "--no-progress"], tmp_path) == ""
    assert imports_after(["verify", str(shards)], tmp_path) == ""
    assert imports_after(["--help"], tmp_path) == ""
    result = CliRunner().invoke(app, ["masks", str(shards), "--out", str(masks), "--generator", "grid", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert imports_after(["verify", str(shards), "--masks", str(masks)], tmp_path) == ""
    assert imports_after(["mask-stats", str(masks), "--out", str(tmp_path / "stats.json")], tmp_path) == ""


def test_raw_mask_commands_load_neither_torch_nor_the_model(sample_image_shards, tmp_path):
    raw = tmp_path / "raw"
    result = CliRunner().invoke(app, ["masks", str(sample_image_shards), "--raw", str(raw), "--generator", "grid", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert imports_after(["repaint", str(raw), "--out", str(tmp_path / "labels"), "--no-progress"], tmp_path) == ""
    assert imports_after(["export-masks", str(raw), "--out", str(tmp_path / "coco.json")], tmp_path) == ""
    assert imports_after(["verify", str(sample_image_shards), "--raw", str(raw)], tmp_path) == ""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sam": {"model": "vit_b", "max_regions": 64}}))
    args = ["split-settings", f"{params}:sam", "--network", str(tmp_path / "n.json"), "--rule", str(tmp_path / "r.json")]
    assert imports_after(args, tmp_path) == ""
    assert json.loads((tmp_path / "n.json").read_text()) == {"model": "vit_b"}
    assert json.loads((tmp_path / "r.json").read_text()) == {"max_regions": 64}


def test_manifest_holds_no_timings_and_its_own_version(sample_image_shards):
    data = json.loads((sample_image_shards / MANIFEST_NAME).read_text())
    assert data["format_version"] == MANIFEST_VERSION
    assert "timings" not in data and "seconds" not in json.dumps(data)


def test_a_manifest_of_another_version_is_refused_by_name(sample_image_shards, tmp_path):
    data = json.loads((sample_image_shards / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**data, "format_version": 1}))
    with pytest.raises(ValueError, match=f"{tmp_path / MANIFEST_NAME}.*version {MANIFEST_VERSION}"):
        read_manifest(tmp_path)


def test_timings_go_to_their_own_file(photos, tmp_path):
    out, timings = tmp_path / "shards", tmp_path / "timings" / "ingest.json"
    result = CliRunner().invoke(app, ["ingest", str(photos), "--out", str(out), "--timings", str(timings), "--no-progress"])
    assert result.exit_code == 0, result.output
    recorded = json.loads(timings.read_text())
    assert recorded["images"] == 2 and recorded["seconds"] > 0 and recorded["images_per_second"] > 0
    masks_timings = tmp_path / "timings" / "masks.json"
    args = ["masks", str(out), "--out", str(tmp_path / "masks"), "--generator", "grid", "--timings", str(masks_timings)]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(masks_timings.read_text())["images"] == 2
    assert not any("seconds" in path.read_text() for path in (tmp_path / "masks").rglob("*.json"))


@pytest.mark.parametrize("command", ["ingest", "masks"])
def test_timings_inside_the_output_directory_are_refused_before_any_work(command, photos, sample_image_shards, tmp_path):
    out = tmp_path / "out"
    source = photos if command == "ingest" else sample_image_shards
    result = CliRunner().invoke(app, [command, str(source), "--out", str(out), "--timings", str(out / "t.json")])
    assert result.exit_code == 1
    assert "--timings" in result.output and "inside --out" in result.output
    assert not out.exists()


def write_params(path: Path, grid_settings) -> Path:
    path.write_text(yaml.safe_dump({"masks": {"settings": {"grid": grid_settings, "sam": {"model": "vit_b"}}}}))
    return path


def test_masks_take_their_settings_from_a_block_of_a_params_file(sample_image_shards, tmp_path):
    params = write_params(tmp_path / "params.yaml", {"grid": 2, "max-regions": 64})
    out = tmp_path / "masks"
    base = ["masks", str(sample_image_shards), "--generator", "grid", "--no-progress"]
    result = CliRunner().invoke(app, [*base, "--out", str(out), "--settings", f"{params}:masks.settings.grid"])
    assert result.exit_code == 0, result.output
    assert {row["num_regions"] for row in read_rows(out / "part-00000-of-00003.parquet")} == {4}
    assert read_manifest(out).settings["rule"]["max_regions"] == 64
    overridden = tmp_path / "overridden"
    args = [*base, "--out", str(overridden), "--settings", f"{params}:masks.settings.grid", "--set", "grid=3"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert read_manifest(overridden).settings["config"] == {"grid": 3}


@pytest.mark.parametrize(
    ("content", "key", "message"),
    [
        (None, "masks.settings.grid", "no such file"),
        ("masks: [unclosed", "masks.settings.grid", "not valid YAML"),
        ({"masks": {"settings": {}}}, "masks.settings.grid", "has no key 'masks.settings.grid'"),
        ({"masks": {"settings": {"grid": 4}}}, "masks.settings.grid", "is not a mapping"),
        ({"masks": {"settings": {"grid": {"cells": 4}}}}, "masks.settings.grid", "unknown option(s) cells"),
    ],
)
def test_bad_settings_files_get_one_clear_line(content, key, message, sample_image_shards, tmp_path):
    params = tmp_path / "params.yaml"
    if content is not None:
        params.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    out = tmp_path / "masks"
    args = ["masks", str(sample_image_shards), "--out", str(out), "--generator", "grid", "--settings", f"{params}:{key}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and message in result.output and len(result.output.splitlines()) == 1
    assert not out.exists()
