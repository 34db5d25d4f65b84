"""Every mask generator on real photographs; SAM through small randomly initialised networks."""

import hashlib
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.generators import build_generator, generator_names
from pipeline.generators.sam_family import weights as sam_weights
from pipeline.generators.sam_family.weights import (
    SAM21_WEIGHTS, SAM_WEIGHTS, OfficialWeights, SamWeightsUnavailable, fetch_weights, resolve_checkpoint, weights_sha256,
)
from random_sams import photo, tiny_sam
from sam_checkpoint_files import write_sam_checkpoint


def test_registry_names_every_generator():
    assert generator_names() == ["coco-panoptic", "felzenszwalb", "grid", "sam", "sam2", "sam3"]


def test_importing_the_registry_loads_no_sam_until_a_sam_generator_is_built():
    probe = (
        "import sys; import pipeline.generators as g; heavy = ('torch', 'segment_anything', 'sam2');"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules];"
        "g.generator_class('sam'); assert 'segment_anything' in sys.modules and 'sam' in g.GENERATORS"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_unknown_generator_and_option_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown mask generator 'slic'"):
        build_generator("slic")
    with pytest.raises(ValueError, match="unknown option"):
        build_generator("grid", {"cells": "4"})
    with pytest.raises(ValueError, match="not a valid int"):
        build_generator("grid", {"grid": "four"})


def test_grid_cells_are_equal_blocks_numbered_row_by_row():
    # 12-pixel cells: under the default speck_area, which merges them (ingest keeps no image this small)
    result = build_generator("grid", {"grid": "2", "speck_area": "0"}).generate(np.zeros((6, 8, 3), np.uint8), "x")
    assert result.label_map.tolist() == [[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3
    assert result.stats.num_regions == 4 and result.stats.coverage == 1.0


def test_the_default_grid_keeps_its_cells_on_the_smallest_image_ingest_keeps():
    result = build_generator("grid").generate(np.zeros((64, 64, 3), np.uint8), "x")
    assert result.stats.num_regions == 16 and np.bincount(result.label_map.ravel()).tolist() == [256] * 16


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
        resolve_checkpoint(SAM_WEIGHTS, "vit_b", "", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SAM checkpoint .*nope.pth does not exist"):
        resolve_checkpoint(SAM_WEIGHTS, "vit_b", str(tmp_path / "nope.pth"), "")
    with pytest.raises(ValueError, match="unknown SAM 2.1 model 'vit_b'"):
        resolve_checkpoint(SAM21_WEIGHTS, "vit_b", "", str(tmp_path))


def test_sam21_downloads_need_a_sha256_to_check_against(tmp_path):
    with pytest.raises(ValueError, match=r"sam2\.1_hiera_tiny\.pt: Meta publishes no sha256.*sha256=HEX"):
        resolve_checkpoint(SAM21_WEIGHTS, "tiny", "", str(tmp_path))
    checkpoint = tmp_path / "mine.pt"
    checkpoint.write_bytes(b"weights")
    with pytest.raises(ValueError, match="mine.pt: sha256 does not match"):
        resolve_checkpoint(SAM21_WEIGHTS, "tiny", str(checkpoint), "", sha256="0" * 64)


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


def test_sam_settings_name_the_weights_by_content_without_loading_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    checkpoint = write_sam_checkpoint(tmp_path / "my_sam.pth", "vit_b")
    generator = build_generator("sam", {"model": "vit_b", "checkpoint": str(checkpoint), "device": "cpu", "batch_size": "3"})
    settings = generator.settings()
    assert settings["weights"] == {"sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert settings["config"]["points_per_side"] == 32 and settings["config"]["mode"] == "exact"
    assert not {"checkpoint", "cache_dir", "sha256", "device", "batch_size"} & set(settings["config"])
    assert generator.batch_size == 3


def test_two_checkpoints_with_the_same_name_and_size_give_different_settings_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    hashes = []
    for folder, value in (("a", 0.0), ("b", 1.0)):
        (tmp_path / folder).mkdir()
        checkpoint = write_sam_checkpoint(tmp_path / folder / "sam_vit_b.pth", "vit_b", value)
        hashes.append(build_generator("sam", {"model": "vit_b", "checkpoint": str(checkpoint)}).settings_hash)
    assert (tmp_path / "a" / "sam_vit_b.pth").stat().st_size == (tmp_path / "b" / "sam_vit_b.pth").stat().st_size
    assert hashes[0] != hashes[1]


def test_a_checkpoint_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"first weights")
    reads = []
    monkeypatch.setattr(sam_weights, "file_sha256", lambda path: reads.append(path) or hashlib.sha256(Path(path).read_bytes()).hexdigest())
    first = weights_sha256(checkpoint)
    assert weights_sha256(checkpoint) == first and len(reads) == 1
    assert (tmp_path / "cache" / "sha256-cache.json").is_file()
    checkpoint.write_bytes(b"other weights")
    os.utime(checkpoint, ns=(1, 1))
    assert weights_sha256(checkpoint) == hashlib.sha256(b"other weights").hexdigest() and len(reads) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "turbo"}, "unknown mode 'turbo'"),
        ({"compile": "true"}, "compile=true needs mode=fast"),
        ({"batch_size": "-1"}, "batch_size must be >= 0"),
        ({"model": "vit_x"}, "unknown SAM model 'vit_x'"),
    ],
)
def test_sam_refuses_bad_settings_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        build_generator("sam", options, model=tiny_sam())


def test_sam_fast_mode_runs_on_the_cpu_without_touching_the_injected_model(one_torch_thread):
    sam, image = tiny_sam(1), photo(2, 80)
    before = {name: value.clone() for name, value in sam.state_dict().items()}
    options = {"points_per_side": "4", "pred_iou_thresh": "0", "stability_score_thresh": "0", "mode": "fast"}
    result = build_generator("sam", options, model=sam).generate(image, "coffee.png")
    assert result.label_map.shape == image.shape[:2] and result.stats.num_regions >= 1
    assert all(torch.equal(before[name], value) for name, value in sam.state_dict().items())
    assert type(sam.image_encoder.blocks[0].attn).forward is sam.image_encoder.blocks[0].attn.forward.__func__
