"""Every mask generator on real photographs; SAM through small randomly initialised networks."""

import hashlib
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from pipeline.generators import GENERATORS, build_generator
from pipeline.generators.sam_amg import AmgSettings, FastAutomaticMaskGenerator
from pipeline.generators.sam_weights import OfficialWeights, SamWeightsUnavailable, fetch_weights, resolve_checkpoint
from random_sams import photo, tiny_sam


def test_registry_names_every_generator():
    assert sorted(GENERATORS) == ["coco-panoptic", "felzenszwalb", "grid", "sam"]


def test_unknown_generator_and_option_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown mask generator 'slic'"):
        build_generator("slic")
    with pytest.raises(ValueError, match="unknown option"):
        build_generator("grid", {"cells": "4"})
    with pytest.raises(ValueError, match="not a valid int"):
        build_generator("grid", {"grid": "four"})


def test_grid_cells_are_equal_blocks_numbered_row_by_row():
    result = build_generator("grid", {"grid": "2"}).generate(np.zeros((6, 8, 3), np.uint8), "x")
    assert result.label_map.tolist() == [[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3
    assert result.stats.num_regions == 4 and result.stats.coverage == 1.0


def test_felzenszwalb_partitions_a_photo_into_canonical_regions():
    image = photo(1, 128)
    generator = build_generator("felzenszwalb", {"scale": "200", "max_regions": "40"})
    result = generator.generate(image, "chelsea.png")
    assert result.label_map.shape == image.shape[:2]
    assert 2 <= result.stats.num_regions <= 40
    assert set(np.unique(result.label_map)) == set(range(result.stats.num_regions))
    assert np.array_equal(result.label_map, generator.generate(image, "chelsea.png").label_map)


def test_settings_hash_follows_the_settings():
    assert build_generator("felzenszwalb").settings_hash == build_generator("felzenszwalb", {"scale": 400.0}).settings_hash
    assert build_generator("felzenszwalb").settings_hash != build_generator("felzenszwalb", {"scale": "300"}).settings_hash
    assert build_generator("grid").settings_hash != build_generator("grid", {"speck_area": "1"}).settings_hash


def test_coco_panoptic_reads_rgb_encoded_ids_matched_by_file_stem(tmp_path):
    ids = np.zeros((64, 80), dtype=np.int64)
    ids[:, 40:] = 5_000_000  # needs all three bytes
    ids[10:20, 10:20] = 300
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "000000000139.png")
    generator = build_generator("coco-panoptic", {"panoptic_dir": str(tmp_path), "speck_area": "0"})
    result = generator.generate(np.zeros((64, 80, 3), np.uint8), "train2017/000000000139.jpg")
    assert result.stats.num_regions == 3
    assert result.label_map[0, 0] == 0 and result.label_map[0, 79] == 1 and result.label_map[15, 15] == 2
    assert result.stats.coverage == pytest.approx(1 - (40 * 64 - 100) / (64 * 80))
    with pytest.raises(ValueError, match="no panoptic PNG"):
        generator.generate(np.zeros((64, 80, 3), np.uint8), "missing.jpg")


@pytest.mark.parametrize(
    "settings",
    [
        dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
        dict(points_per_side=6, pred_iou_thresh=0.05, stability_score_thresh=0.2, stability_score_offset=0.01, points_per_batch=7),
        dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1, min_mask_region_area=20),
    ],
)
def test_fast_amg_returns_the_stock_generators_masks_in_the_same_order(settings):
    sam, image = tiny_sam(), photo(0, 96)
    stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = FastAutomaticMaskGenerator(SamPredictor(sam), AmgSettings(**settings)).generate(image)
    assert len(ours) == len(stock) > 0
    for region, record in zip(ours, stock):
        assert np.array_equal(region.to_full(*image.shape[:2]), record["segmentation"])
        assert region.predicted_iou == pytest.approx(record["predicted_iou"])


def test_sam_generator_with_an_injected_small_sam_covers_every_pixel():
    image = photo(2, 80)
    generator = build_generator(
        "sam", {"points_per_side": "4", "pred_iou_thresh": "0", "stability_score_thresh": "0", "speck_area": "16"},
        model=tiny_sam(1),
    )
    result = generator.generate(image, "coffee.png")
    assert result.label_map.shape == image.shape[:2]
    assert set(np.unique(result.label_map)) == set(range(result.stats.num_regions))
    assert 0.0 < result.stats.coverage <= 1.0 and np.isfinite(result.stats.mean_iou)
    assert generator.settings()["weights"] == "injected"


def test_missing_checkpoint_without_network_names_the_file_and_url(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(SamWeightsUnavailable, match=r"sam_vit_b_01ec64\.pth.*https://dl\.fbaipublicfiles\.com/segment_anything/sam_vit_b_01ec64\.pth"):
        resolve_checkpoint("vit_b", "", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint("vit_b", str(tmp_path / "nope.pth"), "")


def test_download_is_checked_against_the_published_sha256(tmp_path):
    source = tmp_path / "published.pth"
    source.write_bytes(b"weights" * 1000)
    good = OfficialWeights("sam_test.pth", source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest())
    cached = fetch_weights(good, tmp_path / "cache")
    assert cached.read_bytes() == source.read_bytes()
    bad = OfficialWeights("sam_other.pth", source.as_uri(), "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        fetch_weights(bad, tmp_path / "cache")
    assert not (tmp_path / "cache" / "sam_other.pth").exists()


def test_sam_settings_name_the_checkpoint_without_loading_it(tmp_path):
    checkpoint = tmp_path / "my_sam.pth"
    checkpoint.write_bytes(b"not loaded until the first image")
    generator = build_generator("sam", {"model": "vit_b", "checkpoint": str(checkpoint), "device": "cpu"})
    settings = generator.settings()
    assert settings["weights"] == {"file": "my_sam.pth", "bytes": checkpoint.stat().st_size}
    assert "checkpoint" not in settings["config"] and settings["config"]["points_per_side"] == 32
