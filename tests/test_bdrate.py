"""Bjøntegaard deltas against worked examples whose values follow by hand."""

import math

import pytest

from model.bdrate import BDError, INTERPOLATIONS, bd_quality, bd_rate

ANCHOR_RATES = [0.127, 0.199, 0.309, 0.449, 0.649, 0.895]
ANCHOR_PSNR = [29.22, 30.59, 32.26, 34.15, 35.91, 37.72]


@pytest.mark.parametrize("method", sorted(INTERPOLATIONS))
def test_a_constant_rate_factor_is_exactly_that_bd_rate(method):
    """Same quality at 0.9× the rate everywhere: the test codec saves exactly 10 %."""
    test_rates = [rate * 0.9 for rate in ANCHOR_RATES]
    assert bd_rate(ANCHOR_RATES, ANCHOR_PSNR, test_rates, ANCHOR_PSNR, method) == pytest.approx(-10.0, abs=1e-9)


@pytest.mark.parametrize("method", sorted(INTERPOLATIONS))
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
    """The test curve covers only the upper half; the delta is the one measured there."""
    quality = [30.0, 32.0, 34.0, 36.0, 38.0, 40.0]
    rates = [math.exp(0.1 * q) for q in quality]
    upper = [q for q in quality if q >= 34.0]
    upper_rates = [math.exp(0.1 * q) * 1.25 for q in upper]
    assert bd_rate(rates, quality, upper_rates, upper, "pchip") == pytest.approx(25.0, abs=1e-9)


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
