"""Bjøntegaard delta rate and delta quality between two rate-distortion curves.

BD-rate (G. Bjøntegaard, VCEG-M33, 2001) is the average relative bitrate difference of a
test codec against an anchor at equal quality: fit log(rate) as a function of quality for
both curves, integrate each fit over the quality range the two curves share, and turn the
mean difference of the integrals back into a ratio, `exp(mean Δ log R) - 1`. A negative
value means the test codec needs fewer bits. BD-quality (BD-PSNR for PSNR) swaps the
axes: quality as a function of log(rate), mean difference over the shared log-rate range.

Two interpolations, selectable by name:
- `cubic`: the original VCEG-M33 least-squares cubic polynomial, what learned-compression
  papers (SegPIC, WACNN) report;
- `pchip`: piecewise cubic Hermite interpolation through the points (JCTVC-L1100 CTC
  sheet), which cannot overshoot between points where a single cubic misbehaves.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator


def _cubic_integral(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    antiderivative = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))


def _pchip_integral(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    return float(PchipInterpolator(x, y).integrate(low, high))


@dataclass(frozen=True)
class Interpolation:
    """How a curve's points become a function to integrate; `min_points` is what the fit needs."""

    name: str
    min_points: int
    integral: Callable[[np.ndarray, np.ndarray, float, float], float]


INTERPOLATIONS: dict[str, Interpolation] = {
    method.name: method
    for method in (Interpolation("cubic", 4, _cubic_integral), Interpolation("pchip", 2, _pchip_integral))
}


class BDError(ValueError):
    """Two curves that admit no Bjøntegaard delta: too few points, bad values, no overlap."""


def _interpolation(method: str) -> Interpolation:
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown BD interpolation {method!r}; known: {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[method]


def _points(
    rates: Sequence[float], quality: Sequence[float], what: str, method: Interpolation
) -> tuple[np.ndarray, np.ndarray]:
    """(log rate, quality) as float arrays, validated for `method`."""
    rates_array, quality_array = np.asarray(rates, dtype=float), np.asarray(quality, dtype=float)
    if rates_array.ndim != 1 or rates_array.shape != quality_array.shape:
        raise BDError(f"{what}: rates and quality must be two lists of the same length")
    if len(rates_array) < method.min_points:
        raise BDError(f"{what}: {len(rates_array)} points, {method.name} BD needs at least {method.min_points}")
    if not (np.all(np.isfinite(rates_array)) and np.all(np.isfinite(quality_array)) and np.all(rates_array > 0)):
        raise BDError(f"{what}: rates must be positive and all values finite")
    return np.log(rates_array), quality_array


def _mean_difference(
    x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, method: Interpolation, axis: str
) -> float:
    """Mean of (test fit - anchor fit) over the x range both curves cover."""
    low, high = max(x_anchor.min(), x_test.min()), min(x_anchor.max(), x_test.max())
    if not high > low:
        raise BDError(f"the curves do not overlap in {axis}")
    integrals = []
    for x, y, what in ((x_anchor, y_anchor, "anchor"), (x_test, y_test, "test")):
        order = np.argsort(x)
        if np.any(np.diff(x[order]) == 0):
            raise BDError(f"{what}: two points share the same {axis}")
        integrals.append(method.integral(x[order], y[order], low, high))
    return (integrals[1] - integrals[0]) / (high - low)


def _curves(anchor_rates, anchor_quality, test_rates, test_quality, method: str):
    """The interpolation named `method` and both curves as validated (log-rate, quality) points."""
    interpolation = _interpolation(method)
    anchor = _points(anchor_rates, anchor_quality, "anchor", interpolation)
    test = _points(test_rates, test_quality, "test", interpolation)
    return interpolation, anchor, test


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: str = "cubic",
) -> float:
    """Average bitrate difference of test vs anchor at equal quality, in percent (negative: test saves)."""
    interpolation, (log_anchor, quality_anchor), (log_test, quality_test) = _curves(
        anchor_rates, anchor_quality, test_rates, test_quality, method
    )
    mean = _mean_difference(quality_anchor, log_anchor, quality_test, log_test, interpolation, "quality")
    return float(np.expm1(mean) * 100)


def bd_quality(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: str = "cubic",
) -> float:
    """Average quality difference of test vs anchor at equal rate (BD-PSNR in dB for PSNR)."""
    interpolation, (log_anchor, quality_anchor), (log_test, quality_test) = _curves(
        anchor_rates, anchor_quality, test_rates, test_quality, method
    )
    return float(_mean_difference(log_anchor, quality_anchor, log_test, quality_test, interpolation, "rate"))
