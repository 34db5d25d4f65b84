"""Bjøntegaard delta rate and delta quality between two rate-distortion curves.

BD-rate (G. Bjøntegaard, VCEG-M33, 2001) is the average relative bitrate difference of a
test codec against an anchor at equal quality: interpolate log(rate) as a function of
quality for both curves, integrate over the quality range the two share, and turn the
mean difference back into a ratio. Negative means the test codec needs fewer bits.
BD-quality (BD-PSNR for PSNR) swaps the axes: quality as a function of log(rate).

The fits are the `bjontegaard` package's (FAU-LMS, the reference Python implementation):
- `akima` (default): Akima interpolation, which its authors found the most accurate and
  stable of the three;
- `pchip`: piecewise cubic Hermite interpolation, equal to the JCT-VC common-test-conditions
  sheet (JCTVC-L1100);
- `cubic`: the least-squares cubic polynomial of VCEG-M33, which learned-compression papers
  (SegPIC, WACNN) report and which can overshoot wildly between points.

No fit is a measurement when its curves are not rate-distortion curves, so before any fit
both curves are checked, and a failed check raises `BDError` with the reason instead of
returning a number: enough finite points with positive rates; rate rising with λ (where
the λ of each point is known) and quality rising with rate; and an overlap of the two
curves over at least `min_overlap` of their joint range on the integrated axis (the
package's own threshold, 75 %, by default).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bjontegaard import bd_linear

METHODS: dict[str, int] = {"akima": 2, "pchip": 2, "cubic": 4}
"""Interpolations by name, with the fewest points each needs (a cubic polynomial has four coefficients)."""
DEFAULT_METHOD = "akima"
DEFAULT_MIN_OVERLAP = 0.75


class BDError(ValueError):
    """Curves that admit no Bjøntegaard delta; the message says which curve and why."""


@dataclass(frozen=True)
class RDPoints:
    """One curve's points sorted by rate: log10 of bpp and quality, rising together."""

    log_rates: np.ndarray
    quality: np.ndarray


def _number(value: float) -> str:
    return f"{value:.4g}"


def _check_rising(name: str, what: str, values: np.ndarray, steps: Sequence[str]) -> None:
    """Raise naming the first pair of consecutive points (`steps`) where `values` does not rise."""
    for index in range(1, len(values)):
        if not values[index] > values[index - 1]:
            verb = "falls" if values[index] < values[index - 1] else "does not rise"
            raise BDError(f"{name}: {what} {verb} between {steps[index - 1]} and {steps[index]}")


def rd_points(
    name: str,
    rates: Sequence[float],
    quality: Sequence[float],
    lambdas: Sequence[float | None] | None = None,
    method: str = DEFAULT_METHOD,
) -> RDPoints:
    """Check one curve for `method` and sort it; raises BDError naming `name` and the first fault found.

    With every point's λ known, the points are taken in λ order and both rate and quality
    must rise along it; otherwise they are taken in rate order and quality must rise.
    """
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation {method!r}; known: {', '.join(METHODS)}")
    rates_array, quality_array = np.asarray(rates, dtype=float), np.asarray(quality, dtype=float)
    if rates_array.ndim != 1 or rates_array.shape != quality_array.shape:
        raise BDError(f"{name}: rates and quality must be two lists of the same length")
    if len(rates_array) < METHODS[method]:
        raise BDError(f"{name}: {len(rates_array)} points, {method} BD needs at least {METHODS[method]}")
    if not (np.all(np.isfinite(rates_array)) and np.all(np.isfinite(quality_array)) and np.all(rates_array > 0)):
        raise BDError(f"{name}: rates must be positive and all values finite")
    known_lambdas = lambdas is not None and all(value is not None for value in lambdas)
    if known_lambdas:
        order = np.argsort(np.asarray(lambdas, dtype=float), kind="stable")
        steps = [f"λ={_number(lambdas[i])}" for i in order]
        _check_rising(name, "rate", rates_array[order], steps)
    else:
        order = np.argsort(rates_array, kind="stable")
        if np.any(np.diff(rates_array[order]) == 0):
            raise BDError(f"{name}: two points share the same rate")
        steps = [f"{_number(rates_array[i])} bpp" for i in order]
    _check_rising(name, "quality", quality_array[order], steps)
    return RDPoints(np.log10(rates_array[order]), quality_array[order])


def overlap(anchor: np.ndarray, test: np.ndarray) -> float:
    """Share of the joint range of two sorted axes that both cover (0 when they are apart)."""
    joint = max(anchor[-1], test[-1]) - min(anchor[0], test[0])
    shared = min(anchor[-1], test[-1]) - max(anchor[0], test[0])
    return max(shared, 0.0) / joint if joint > 0 else 0.0


def _delta(base_anchor, value_anchor, base_test, value_test, axis: str, method: str, min_overlap: float) -> float:
    """Mean of (test - anchor) interpolations of value over the shared range of base."""
    shared = overlap(base_anchor, base_test)
    if shared == 0:
        raise BDError(f"the curves do not overlap in {axis}")
    if shared < min_overlap:
        raise BDError(
            f"the curves share {shared:.0%} of their joint {axis} range, less than the {min_overlap:.0%} a BD value needs"
        )
    return float(bd_linear(base_anchor, value_anchor, base_test, value_test, method,
                           require_matching_points=False, min_overlap=0))


def bd_rate_of(anchor: RDPoints, test: RDPoints, method: str = DEFAULT_METHOD,
               min_overlap: float = DEFAULT_MIN_OVERLAP) -> float:
    """BD-rate in percent of two checked curves (negative: test needs fewer bits)."""
    mean_log = _delta(anchor.quality, anchor.log_rates, test.quality, test.log_rates, "quality", method, min_overlap)
    return float((10**mean_log - 1) * 100)


def bd_quality_of(anchor: RDPoints, test: RDPoints, method: str = DEFAULT_METHOD,
                  min_overlap: float = DEFAULT_MIN_OVERLAP) -> float:
    """BD-quality (dB for PSNR) of two checked curves (positive: test is better at equal rate)."""
    return _delta(anchor.log_rates, anchor.quality, test.log_rates, test.quality, "rate", method, min_overlap)


def bd_rate(anchor_rates: Sequence[float], anchor_quality: Sequence[float], test_rates: Sequence[float],
            test_quality: Sequence[float], method: str = DEFAULT_METHOD,
            min_overlap: float = DEFAULT_MIN_OVERLAP) -> float:
    """Average bitrate difference of test vs anchor at equal quality, in percent (negative: test saves)."""
    anchor = rd_points("anchor", anchor_rates, anchor_quality, method=method)
    return bd_rate_of(anchor, rd_points("test", test_rates, test_quality, method=method), method, min_overlap)


def bd_quality(anchor_rates: Sequence[float], anchor_quality: Sequence[float], test_rates: Sequence[float],
               test_quality: Sequence[float], method: str = DEFAULT_METHOD,
               min_overlap: float = DEFAULT_MIN_OVERLAP) -> float:
    """Average quality difference of test vs anchor at equal rate (BD-PSNR in dB for PSNR)."""
    anchor = rd_points("anchor", anchor_rates, anchor_quality, method=method)
    return bd_quality_of(anchor, rd_points("test", test_rates, test_quality, method=method), method, min_overlap)
