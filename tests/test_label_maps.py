"""The overlap-to-label-map rule on crafted masks, and the PNG storage of label maps."""

import numpy as np
import pytest

from pipeline.label_map_format import decode_label_map, encode_label_map
from pipeline.label_maps import LabelMapRule, canonical_relabel, label_map_from_raw, merge_small_regions
from pipeline.raw_mask_format import dense_raw_masks

NO_CLEANUP = LabelMapRule(speck_area=0, max_regions=65536)


def rule_on(masks: list[np.ndarray], ious: list[float], rule: LabelMapRule):
    """The rule applied to binary masks with these predicted IoUs, in this order."""
    return label_map_from_raw(dense_raw_masks(np.stack(masks), predicted_ious=ious), rule)


def box_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_small_masks_stay_on_top_of_large_ones_whatever_the_input_order():
    large, small = box_mask(20, 20, 0, 20, 0, 20), box_mask(20, 20, 5, 10, 5, 10)
    for masks, ious in (([large, small], [0.9, 0.5]), ([small, large], [0.5, 0.9])):
        result = rule_on(masks, ious, NO_CLEANUP)
        assert result.stats.num_regions == 2
        inside = result.label_map[5:10, 5:10]
        assert (inside == inside[0, 0]).all() and (result.label_map[0, 0] != inside[0, 0])
        assert (result.label_map == result.label_map[0, 0]).sum() == 400 - 25


def test_equal_areas_paint_the_higher_iou_mask_first_so_the_other_keeps_the_overlap():
    first, overlapping = box_mask(10, 10, 0, 10, 0, 5), box_mask(10, 10, 0, 10, 3, 8)
    result = rule_on([first, overlapping], [0.2, 0.8], NO_CLEANUP)
    # Higher IoU is painted first, so the lower-IoU mask owns the overlap (columns 3-4).
    assert result.label_map[0, 3] == result.label_map[0, 0]
    assert result.label_map[0, 5] != result.label_map[0, 0]


def test_uncovered_pixels_form_one_region_per_connected_area_and_coverage_counts_them():
    result = rule_on([box_mask(10, 12, 0, 10, 4, 8)], [0.7], NO_CLEANUP)  # a vertical band splits the holes
    assert result.stats.num_regions == 3
    assert result.label_map[0, 0] != result.label_map[0, 11]
    assert result.stats.coverage == pytest.approx(40 / 120)
    assert result.stats.mean_iou == pytest.approx(0.7)


def test_a_speck_merges_into_the_neighbour_with_the_longest_shared_border():
    label_map = np.zeros((10, 10), dtype=np.int32)
    label_map[:, 5:] = 1
    label_map[4:6, 3:5] = 2  # 2x2 speck: borders region 0 on 6 pixel pairs, region 1 on 2
    merged = merge_small_regions(label_map, LabelMapRule(speck_area=5, max_regions=256))
    assert (merged[4:6, 3:5] == merged[0, 0]).all()
    assert len(np.unique(merged)) == 2


def test_the_cap_merges_smallest_regions_first_until_it_holds():
    label_map = np.repeat(np.arange(6, dtype=np.int32)[None, :], 6, axis=0).repeat(np.array([1, 2, 3, 4, 5, 6]), axis=1)
    merged = canonical_relabel(merge_small_regions(label_map, LabelMapRule(speck_area=0, max_regions=3)))
    assert merged.max() == 2
    widths = sorted(np.bincount(merged[0]).tolist())
    assert sum(widths) == 21 and widths[-1] >= 6


def test_canonical_relabel_numbers_regions_by_first_appearance():
    label_map = np.array([[7, 7, 3], [5, 3, 3]])
    assert canonical_relabel(label_map).tolist() == [[0, 0, 1], [2, 1, 1]]


def test_rule_is_deterministic_and_every_pixel_gets_a_label():
    rng = np.random.default_rng(0)
    masks, ious = [rng.random((32, 32)) > 0.7 for _ in range(8)], rng.random(8).tolist()
    first = rule_on(masks, ious, LabelMapRule(speck_area=8, max_regions=5))
    second = rule_on(list(masks), list(ious), LabelMapRule(speck_area=8, max_regions=5))
    assert np.array_equal(first.label_map, second.label_map)
    assert first.label_map.min() == 0 and first.label_map.max() == first.stats.num_regions - 1 <= 4


@pytest.mark.parametrize(("regions", "bits"), [(256, 8), (300, 16)])
def test_png_is_8_bit_up_to_256_regions_else_16_bit_and_lossless(regions, bits):
    label_map = (np.arange(40 * 30).reshape(40, 30) % regions).astype(np.int32)
    data = encode_label_map(label_map)
    assert data[24] == bits  # IHDR bit depth
    assert np.array_equal(decode_label_map(data, "test"), label_map)
