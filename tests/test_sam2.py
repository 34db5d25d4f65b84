"""`sam2`: SAM 2.1 through the official package, with random weights, on real photos and through `segpic masks`."""

import hashlib
import json

import numpy as np
import pytest
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.generators import build_generator
from pipeline.generators.sam_family.sam2.generator import build_sam21
from pipeline.ingest import IngestConfig, ingest
from pipeline.label_maps import label_map_from_raw
from pipeline.manifest import read_manifest
from pipeline.shards import list_shards
from random_sams import photo, records_as_raw_masks
from repaint_checks import assert_repaint_writes_what_masks_wrote, overlapping_images, shard_bytes

FEW_POINTS = {"points_per_side": "3", "pred_iou_thresh": "0", "stability_score_thresh": "0"}


@pytest.fixture(scope="module")
def tiny_sam21() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam21("tiny", torch.device("cpu"))


@pytest.fixture(scope="module")
def random_sam21_checkpoint(tiny_sam21, tmp_path_factory):
    """A SAM 2.1 tiny checkpoint file of random weights, in Meta's `{"model": state_dict}` layout."""
    path = tmp_path_factory.mktemp("sam21") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": tiny_sam21.state_dict()}, path)
    return path


def test_sam2_label_maps_apply_the_project_rule_to_the_official_generators_masks(tiny_sam21, one_torch_thread):
    image = photo(1, 96)
    generator = build_generator("sam2", {**FEW_POINTS, "model": "tiny"}, model=tiny_sam21)
    result = generator.generate(image, "chelsea.png")
    records = SAM2AutomaticMaskGenerator(tiny_sam21, points_per_side=3, pred_iou_thresh=0, stability_score_thresh=0).generate(image)
    expected = label_map_from_raw(records_as_raw_masks(records, *image.shape[:2]), generator.rule)
    assert len(records) > 0 and np.array_equal(result.label_map, expected.label_map)
    assert result.stats == expected.stats


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "huge"}, "unknown SAM 2.1 model 'huge'"),
        ({"model": "tiny", "checkpoint": "/no/such/sam2.pt"}, "SAM 2.1 checkpoint /no/such/sam2.pt does not exist"),
        ({"model": "tiny", "points_per_side": "0"}, "points_per_side and points_per_batch must be >= 1"),
    ],
)
def test_sam2_refuses_bad_settings_by_name(options, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_generator("sam2", options)


@pytest.fixture(scope="module")
def four_image_shards(tmp_path_factory):
    """Four sample photos in shards of about one image each (SAM 2.1 encodes every image at 1024 px)."""
    out = tmp_path_factory.mktemp("four_images")
    ingest(IngestConfig(source="sample", out=out, shard_bytes=100_000, row_group_bytes=100_000, limit=4))
    return out


@pytest.mark.slow
def test_sam2_masks_through_the_command_line_pass_verify_on_one_and_two_devices(
    four_image_shards, random_sam21_checkpoint, tmp_path, monkeypatch, one_torch_thread
):
    # One thread here, torch's default in the spawned workers unless they follow this process:
    # random SAM 2.1 masks change with the thread count, so equal shards prove they follow it.
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    settings = [f"sam2.{key}={value}" for key, value in FEW_POINTS.items()]
    settings += ["sam2.model=tiny", f"sam2.checkpoint={random_sam21_checkpoint}", "speck_area=16"]
    settings += ["sam2.box_nms_thresh=1.0"]  # keeps overlapping masks: where the label-map rule decides
    outputs = {}
    for name, devices in (("one", "cpu"), ("two", "cpu,cpu")):
        out = tmp_path / name
        args = ["masks", str(four_image_shards), "--out", str(out), "--generator", "sam2", "--devices", devices, "--no-progress"]
        result = CliRunner().invoke(app, args + [flag for setting in settings for flag in ("--set", setting)])
        assert result.exit_code == 0, result.output
        verified = CliRunner().invoke(app, ["verify", str(four_image_shards), "--masks", str(out)])
        assert verified.exit_code == 0, verified.output
        outputs[name] = {path.name: path.read_bytes() for path in list_shards(out)}
    assert outputs["one"] == outputs["two"] and len(outputs["one"]) == len(list_shards(four_image_shards)) >= 2
    raw = tmp_path / "one-raw"  # kept by default for the SAM family
    assert shard_bytes(tmp_path / "two-raw") == shard_bytes(raw) and all(overlapping_images(raw))
    assert_repaint_writes_what_masks_wrote(four_image_shards, tmp_path / "one", raw, {"speck_area": 16}, tmp_path / "repainted")
    manifest = read_manifest(tmp_path / "one")
    assert manifest.settings["generator"] == "sam2"
    assert manifest.settings["weights"] == {"sha256": hashlib.sha256(random_sam21_checkpoint.read_bytes()).hexdigest()}
    assert json.dumps(manifest.settings) == json.dumps(read_manifest(tmp_path / "two").settings)
