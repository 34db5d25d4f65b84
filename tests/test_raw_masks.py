"""Raw masks: COCO compressed RLE exactly as pycocotools writes and reads it, and the label-map rule's mask selection."""

import datasets
import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from pipeline.generators import build_generator
from pipeline.label_maps import LabelMapRule, label_map_from_raw
from pipeline.masks import MasksConfig, make_masks
from pipeline.raw_mask_format import dense_raw_masks, partition_raw_masks, rles_from_masks, runs_from_counts
from pipeline.shards import list_shards, read_rows
from random_sams import photo


def random_masks(seed: int) -> np.ndarray:
    """Masks of random sizes and densities, including all-empty and all-full ones."""
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 50, size=2)
    masks = rng.random((5, height, width)) < rng.random((5, 1, 1))
    masks[0], masks[1] = False, True
    return masks


def pycocotools_rles(masks: np.ndarray) -> list[dict]:
    return coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


@pytest.mark.parametrize("seed", range(20))
def test_masks_encode_to_pycocotools_strings_and_decode_back_to_their_runs(seed):
    masks = random_masks(seed)
    expected = [rle["counts"] for rle in pycocotools_rles(masks)]
    height, width = masks.shape[1:]
    assert [rle["counts"] for rle in rles_from_masks(masks)] == expected  # host arrays
    assert [rle["counts"] for rle in rles_from_masks(torch.from_numpy(masks))] == expected  # tensors
    for mask, counts in zip(masks, expected):
        runs = runs_from_counts(counts.decode())
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)  # zeros first, then alternating
        assert np.array_equal(flat.reshape(width, height).T, mask)


def test_a_photos_segments_encode_as_its_partition():
    segments = (photo(1, 96)[..., 0] // 64).astype(np.int32)  # four intensity bands: ragged, many runs
    raw = partition_raw_masks(segments)
    assert len(raw.masks) == len(np.unique(segments))
    for region, mask in zip(np.unique(segments), raw.masks):
        decoded = coco_mask.decode({"size": [raw.height, raw.width], "counts": mask.counts.encode()})
        assert np.array_equal(decoded.astype(bool), segments == region) and mask.area == (segments == region).sum()
    assert sum(mask.area for mask in raw.masks) == segments.size


def box(y0: int, y1: int, x0: int, x1: int, shape=(20, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Three overlapping masks: a large one of low predicted IoU, a middle one, a small one of high IoU.
MASKS = dense_raw_masks(np.stack([box(0, 20, 0, 20), box(0, 10, 0, 10), box(2, 5, 2, 5)]), predicted_ious=[0.5, 0.7, 0.9])
NO_CLEANUP = dict(speck_area=0, max_regions=65536)


def regions_of(rule: LabelMapRule) -> int:
    return label_map_from_raw(MASKS, rule).stats.num_regions


def test_by_default_every_mask_is_painted():
    assert regions_of(LabelMapRule(**NO_CLEANUP)) == 3


def test_the_predicted_iou_floor_and_the_minimum_area_drop_masks():
    assert regions_of(LabelMapRule(min_predicted_iou=0.6, **NO_CLEANUP)) == 3  # large one gone: the rest is uncovered
    result = label_map_from_raw(MASKS, LabelMapRule(min_predicted_iou=0.6, **NO_CLEANUP))
    assert result.stats.coverage == pytest.approx(100 / 400) and result.stats.mean_iou == pytest.approx(0.8)
    assert regions_of(LabelMapRule(min_mask_area=10, **NO_CLEANUP)) == 2  # the 3x3 one is gone


@pytest.mark.parametrize(("ranking", "kept_small"), [("score", True), ("area", False)])
def test_the_cap_keeps_the_best_masks_by_score_or_by_area(ranking, kept_small):
    result = label_map_from_raw(MASKS, LabelMapRule(max_masks=2, rank_masks_by=ranking, **NO_CLEANUP))
    # by score: the middle and small masks, and the uncovered rest; by area: the large and middle ones
    assert result.stats.num_regions == (3 if kept_small else 2)
    assert (result.label_map[3, 3] != result.label_map[7, 7]) == kept_small


def test_masks_without_a_quality_are_not_dropped_by_the_floor():
    partition = partition_raw_masks(np.repeat(np.arange(4), 5).reshape(4, 5).astype(np.int32))
    result = label_map_from_raw(partition, LabelMapRule(min_predicted_iou=0.9, **NO_CLEANUP))
    assert result.stats.num_regions == 4 and result.stats.coverage == 1.0 and np.isnan(result.stats.mean_iou)


def test_opt_in_keys_are_recorded_only_when_set_so_earlier_sets_keep_their_settings_hash():
    assert LabelMapRule().settings() == {"speck_area": 64, "max_regions": 256}
    assert LabelMapRule(max_masks=50, rank_masks_by="area").settings() == {
        "speck_area": 64, "max_regions": 256, "max_masks": 50, "rank_masks_by": "area"
    }
    grid = build_generator("grid", {"grid": "3"})
    assert grid.settings() == {"generator": "grid", "config": {"grid": 3}, "rule": {"speck_area": 64, "max_regions": 256}}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_predicted_iou": "1.5"}, "min_predicted_iou must be in"),
        ({"min_mask_area": "-1"}, "min_mask_area and max_masks must be >= 0"),
        ({"rank_masks_by": "colour"}, "rank_masks_by must be one of score, area"),
        ({"max_regions": "0"}, "max_regions must be in 1..65536"),
    ],
)
def test_rule_values_out_of_range_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        build_generator("grid", options)


def test_raw_shards_are_readable_by_datasets_with_their_masks_as_coco_annotations(sample_image_shards, tmp_path):
    config = MasksConfig(images=sample_image_shards, out=None, raw=tmp_path / "raw", generator="grid", options=(("grid", "2"),))
    make_masks(config)
    files = [str(path) for path in list_shards(tmp_path / "raw")]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    first, row = loaded[0], next(read_rows(list_shards(tmp_path / "raw")[0]))
    assert first["id"] == row["id"] and len(first["masks"]) == 4 and first["failure"] is None
    annotation = first["masks"][0]
    assert annotation["segmentation"]["size"] == [first["height"], first["width"]]
    decoded = coco_mask.decode({"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"]})
    assert decoded.sum() == annotation["area"] and annotation["predicted_iou"] is None
