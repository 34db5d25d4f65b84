"""Bjøntegaard deltas against worked examples whose values follow by hand, and the curves they refuse."""

import math

import pytest

from model.bdrate import METHODS, BDError, bd_quality, bd_rate, rd_points

ANCHOR_RATES = [0.127, 0.199, 0.309, 0.449, 0.649, 0.895]
ANCHOR_PSNR = [29.22, 30.59, 32.26, 34.15, 35.91, 37.72]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_constant_rate_factor_is_exactly_that_bd_rate(method):
    """Same quality at 0.9× the rate everywhere: the test codec saves exactly 10 %."""
    test_rates = [rate * 0.9 for rate in ANCHOR_RATES]
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, test_rates, ANCHOR_PSNR, method) == pytest.approx(-10.0, abs=1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_psnr_shift_on_a_log_linear_curve(method):
    """log R = 0.2·(Q − 30): a curve 0.5 dB higher gives BD-PSNR 0.5 dB and BD-rate exp(−0.1) − 1."""
    quality = [30.0, 31.5, 33.0, 34.5, 36.0]
    rates = [math.exp(0.2 * (q - 30)) for q in quality]
    better = [q + 0.5 for q in quality]
    assert bd_quality(rates, quality, rates, better, method) == pytest.approx(0.5, abs=1e-9)
    assert bd_rate(rates, quality, rates, better, method) == pytest.approx(math.expm1(-0.1) * 100, abs=1e-9)


def test_cubic_bd_rate_integrates_a_curved_difference():
    """Δ log R = 0.01·(Q − 33)² over Q in [30, 36] has mean 0.03, so BD-rate = exp(0.03) − 1."""
    quality = [30.0, 31.0, 32.5, 34.0, 35.0, 36.0]
    anchor_rates = [math.exp(0.1 * (q - 30)) for q in quality]
    test_rates = [math.exp(0.1 * (q - 30) + 0.01 * (q - 33) ** 2) for q in quality]
    expected = math.expm1(0.03) * 100
    assert bd_rate(anchor_rates, quality, test_rates, quality, "cubic") == pytest.approx(expected, abs=1e-9)


def test_only_the_shared_quality_range_counts():
    """The test curve covers only the upper 60 %; the delta is the one measured there."""
    quality = [30.0, 32.0, 34.0, 36.0, 38.0, 40.0]
    rates = [math.exp(0.1 * q) for q in quality]
    upper = [q for q in quality if q >= 34.0]
    upper_rates = [math.exp(0.1 * q) * 1.25 for q in upper]
    assert bd_rate(rates, quality, upper_rates, upper, "pchip", min_overlap=0.5) == pytest.approx(25.0, abs=1e-9)


def test_too_little_overlap_is_refused_with_the_share():
    """Sharing 60 % of the joint quality range is under the default 75 %: no number, the reason instead."""
    quality = [30.0, 32.0, 34.0, 36.0, 38.0, 40.0]
    rates = [math.exp(0.1 * q) for q in quality]
    upper = [q for q in quality if q >= 34.0]
    with pytest.raises(BDError, match="share 60% of their joint quality range, less than the 75%"):
        bd_rate(rates, quality, [math.exp(0.1 * q) for q in upper], upper)


def test_point_order_does_not_matter():
    order = [3, 0, 5, 1, 4, 2]
    shuffled_rates = [ANCHOR_RATES[i] * 0.95 for i in order]
    shuffled_psnr = [ANCHOR_PSNR[i] + 0.1 for i in order]
    sorted_result = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, [r * 0.95 for r in ANCHOR_RATES], [p + 0.1 for p in ANCHOR_PSNR])
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, shuffled_rates, shuffled_psnr) == pytest.approx(sorted_result, abs=1e-12)


def test_curves_without_overlap_are_refused():
    with pytest.raises(BDError, match="do not overlap"):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, [p + 20 for p in ANCHOR_PSNR])


def test_cubic_needs_four_points():
    with pytest.raises(BDError, match="at least 4"):
        bd_rate(ANCHOR_RATES[:3], ANCHOR_PSNR[:3], ANCHOR_RATES, ANCHOR_PSNR, "cubic")


def test_non_positive_rates_are_refused():
    with pytest.raises(BDError, match="positive"):
        bd_rate([0.0, *ANCHOR_RATES[1:]], ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown BD interpolation"):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR, "linear")


def test_quality_falling_with_rate_is_refused_naming_the_points():
    with pytest.raises(BDError, match=r"test: quality falls between 0.309 bpp and 0.449 bpp"):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, [29.22, 30.59, 32.26, 31.0, 35.91, 37.72])


def test_rate_falling_with_lambda_is_refused_naming_the_lambdas():
    with pytest.raises(BDError, match=r"grid: rate falls between λ=0.025 and λ=0.0483"):
        rd_points("grid", [0.2, 0.3, 0.5, 0.45], [28.0, 29.0, 30.0, 31.0], [0.0018, 0.0067, 0.025, 0.0483])


def test_quality_falling_along_lambda_is_refused_naming_the_lambdas():
    with pytest.raises(BDError, match=r"grid: quality falls between λ=0.025 and λ=0.0483"):
        rd_points("grid", [0.2, 0.3, 0.5, 0.6], [28.0, 29.0, 30.0, 29.5], [0.0018, 0.0067, 0.025, 0.0483])


def test_points_given_out_of_lambda_order_are_sorted_by_lambda():
    points = rd_points("x", [0.5, 0.2, 0.3], [30.0, 28.0, 29.0], [0.025, 0.0018, 0.0067])
    assert list(points.quality) == [28.0, 29.0, 30.0]
    assert list(points.log_rates) == pytest.approx([math.log10(r) for r in (0.2, 0.3, 0.5)])


def test_equal_quality_at_two_rates_is_refused():
    with pytest.raises(BDError, match="quality does not rise"):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, ANCHOR_RATES, [29.22, 30.59, 30.59, 34.15, 35.91, 37.72])
