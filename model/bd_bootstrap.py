"""How sure a BD value is: a paired bootstrap over the evaluation images.

A BD-rate from ten images can be noise, and no published tool says so (CompressAI's
plots, the VCEG-M33 scripts and the `bjontegaard` package all return one number). Each
resample draws as many images as the set has, with replacement, and the same draw for
both curves (they were measured on the same images, so their differences are paired);
every RD point is re-averaged over the drawn images the way `segpic eval` averages them,
and the BD value is computed again with the same checks and fit. The 2.5th and 97.5th
percentiles of those values are the 95 % interval. A resample whose curves fail a check
(quality no longer rising, too little overlap) has no BD value; when more than
`MAX_FAILED_SHARE` of them fail, the set is too small or the curves too close for an
interval, and there is none.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.bdrate import BDError, bd_quality_of, bd_rate_of, rd_points

MIN_IMAGES = 5
"""Fewer images give so few distinct resamples that the percentiles mean little."""
MAX_FAILED_SHARE = 0.05
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class ImageSamples:
    """One curve's per-image measurements on one quality metric.

    `bpp` and `quality` are (points, images) arrays, NaN where an image has no value
    (MS-SSIM of images too small for it); `to_axis` turns a mean of `quality` into the
    plotted quality (identity for PSNR, dB for MS-SSIM).
    """

    images: tuple[str, ...]
    bpp: np.ndarray
    quality: np.ndarray
    lambdas: tuple[float | None, ...] | None
    to_axis: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A 95 % interval (low, high), or None for both with `note` saying why; `valid` resamples counted."""

    low: float | None
    high: float | None
    valid: int
    note: str | None = None


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise ValueError(f"--resamples must be at least 100 for a 95 % interval, got {self.resamples}")


def _weighted_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(resamples, points) means of (points, images) `values` under (resamples, images) draw counts, NaN skipped."""
    present = ~np.isnan(values)
    totals = counts @ np.where(present, values, 0.0).T
    weights = counts @ present.T.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals / weights


def no_interval(note: str) -> tuple[Interval, Interval]:
    """The (BD-rate, BD-quality) pair of intervals that are not there, both saying why."""
    return Interval(None, None, 0, note), Interval(None, None, 0, note)


def bootstrap_bd(
    anchor: ImageSamples, test: ImageSamples, method: str, min_overlap: float, settings: BootstrapSettings
) -> tuple[Interval, Interval]:
    """95 % intervals of (BD-rate %, BD-quality) of `test` against `anchor`, resampling images."""
    if anchor.images != test.images:
        return no_interval("the two curves were evaluated on different images")
    count = len(anchor.images)
    if count < MIN_IMAGES:
        return no_interval(f"{count} images; an interval needs at least {MIN_IMAGES}")
    rng = np.random.default_rng(settings.seed)
    counts = rng.multinomial(count, np.full(count, 1 / count), size=settings.resamples).astype(float)
    means = [
        (_weighted_means(samples.bpp, counts), samples.to_axis(_weighted_means(samples.quality, counts)))
        for samples in (anchor, test)
    ]
    rates, qualities = [], []
    for index in range(settings.resamples):
        try:
            anchor_points = rd_points("anchor", means[0][0][index], means[0][1][index], anchor.lambdas, method)
            test_points = rd_points("test", means[1][0][index], means[1][1][index], test.lambdas, method)
            rate = bd_rate_of(anchor_points, test_points, method, min_overlap)
            quality = bd_quality_of(anchor_points, test_points, method, min_overlap)
        except BDError:
            continue
        rates.append(rate)
        qualities.append(quality)
    failed = settings.resamples - len(rates)
    if failed > MAX_FAILED_SHARE * settings.resamples:
        return no_interval(
            f"{failed} of {settings.resamples} resamples of the {count} images give curves with no valid fit "
            f"(more than {MAX_FAILED_SHARE:.0%}): too few images or too close curves for an interval"
        )
    note = f"{failed} of {settings.resamples} resamples had no valid fit and are left out" if failed else None
    tail = (1 - CONFIDENCE) / 2 * 100
    return tuple(
        Interval(*(float(bound) for bound in np.percentile(values, [tail, 100 - tail])), len(values), note)
        for values in (rates, qualities)
    )


def verdict(interval: Interval, below_zero: str, above_zero: str) -> str | None:
    """`below_zero`/`above_zero` when the interval excludes zero on that side, 'within noise' when it holds zero."""
    if interval.low is None or interval.high is None:
        return None
    if interval.low <= 0 <= interval.high:
        return "within noise"
    return below_zero if interval.high < 0 else above_zero
