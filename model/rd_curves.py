"""Rate-distortion curves as the comparison reads them: from `segpic eval` results or published points.

A curve is a list of (bpp, quality) points, one per trained rate (λ). Curves come from
`segpic eval` results (or any CompressAI `eval_model` JSON) and from the published
points shipped in `model/reference/published_curves.json`, named `ref:<key>` (e.g.
`ref:segpic`, `ref:wacnn`). A `segpic eval` curve also knows each point's λ (from its
checkpoint) and every image's measurements, which the BD checks and the bootstrap use.
MS-SSIM is read in dB, -10·log10(1 - MS-SSIM), as learned-compression papers plot it.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from model.bd_bootstrap import ImageSamples

REFERENCE_PREFIX = "ref:"
REFERENCE_FILE = "published_curves.json"


def _identity(values: np.ndarray) -> np.ndarray:
    return values


def _ms_ssim_to_db(values: np.ndarray) -> np.ndarray:
    return -10 * np.log10(np.maximum(1 - np.asarray(values, dtype=float), 1e-12))


@dataclass(frozen=True)
class QualityMetric:
    """One quality axis: its name in tables, its plot label, its results column and how a mean becomes the axis."""

    name: str
    title: str
    label: str
    column: str
    to_axis: Callable[[np.ndarray], np.ndarray]
    axis_column: str | None = None
    """A results column already on the axis (CompressAI writes `ms-ssim-db` beside `ms-ssim-rgb`)."""

    def read(self, results: Mapping[str, Sequence[float | None]]) -> list[float] | None:
        """The curve's values on this axis, or None when absent or when any point lacks one."""
        if self.axis_column and self.axis_column in results:
            return _complete(results, self.axis_column)
        values = _complete(results, self.column)
        return None if values is None else [float(v) for v in self.to_axis(np.asarray(values, dtype=float))]


def _complete(results: Mapping[str, Sequence[float | None]], key: str) -> list[float] | None:
    values = results.get(key)
    return None if values is None or any(value is None for value in values) else list(values)


QUALITY_METRICS: dict[str, QualityMetric] = {
    metric.name: metric
    for metric in (
        QualityMetric("psnr", "PSNR", "PSNR (dB)", "psnr-rgb", _identity),
        QualityMetric("ms-ssim", "MS-SSIM", "MS-SSIM (dB)", "ms-ssim-rgb", _ms_ssim_to_db, "ms-ssim-db"),
    )
}


@dataclass(frozen=True)
class PerImage:
    """Every image's measurements: `bpp` and `columns[column]` are (points, images) arrays, NaN where missing."""

    images: tuple[str, ...]
    bpp: np.ndarray
    columns: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class RDCurve:
    """Points of one codec: `quality[metric]` aligns with `bpp`; metrics the source lacks are absent.

    `lambdas` holds each point's λ where the results know it; `per_image` the image rows
    of a `segpic eval` result (None for published points and bare CompressAI files);
    `image_set` names what the points were measured on.
    """

    name: str
    label: str
    source: str
    bpp: tuple[float, ...]
    quality: Mapping[str, tuple[float, ...]]
    lambdas: tuple[float | None, ...] | None = None
    per_image: PerImage | None = None
    image_set: str | None = None

    def samples(self, metric: str) -> ImageSamples | None:
        """The per-image measurements the bootstrap resamples, or None when the curve has none for `metric`."""
        if self.per_image is None or metric not in self.quality:
            return None
        spec = QUALITY_METRICS[metric]
        return ImageSamples(
            self.per_image.images, self.per_image.bpp, self.per_image.columns[spec.column], self.lambdas, spec.to_axis
        )


def _per_image(document: Mapping[str, Any], points: int) -> PerImage | None:
    """The `per_image` rows as (points, images) arrays, or None unless every checkpoint has every image once."""
    rows, checkpoints = document.get("per_image") or [], document.get("checkpoints") or []
    if not rows or len(checkpoints) != points:
        return None
    paths = [entry.get("path") for entry in checkpoints]
    images = tuple(dict.fromkeys(row.get("image") for row in rows))
    index = {(row.get("checkpoint"), row.get("image")): row for row in rows}
    if len(index) != len(rows) or len(rows) != points * len(images):
        return None
    if any((path, image) not in index for path in paths for image in images):
        return None

    def matrix(key: str) -> np.ndarray:
        values = [[index[path, image].get(key) for image in images] for path in paths]
        return np.array([[np.nan if value is None else float(value) for value in row] for row in values])

    columns = {metric.column: matrix(metric.column) for metric in QUALITY_METRICS.values()}
    return PerImage(images, matrix("bpp"), columns)


def _lambdas(document: Mapping[str, Any], points: int) -> tuple[float | None, ...] | None:
    checkpoints = document.get("checkpoints") or []
    if len(checkpoints) != points:
        return None
    return tuple(None if entry.get("lmbda") is None else float(entry["lmbda"]) for entry in checkpoints)


def _curve(name: str, label: str, source: str, results: Any, document: Mapping[str, Any] | None = None) -> RDCurve:
    if not isinstance(results, Mapping) or "bpp" not in results:
        raise ValueError(f"{source}: no results.bpp list, not a rate-distortion results file")
    bpp = tuple(float(value) for value in results["bpp"])
    quality = {}
    for metric in QUALITY_METRICS.values():
        values = metric.read(results)
        if values is None:
            continue
        if len(values) != len(bpp):
            raise ValueError(f"{source}: {len(values)} {metric.name} values for {len(bpp)} bpp values")
        quality[metric.name] = tuple(float(value) for value in values)
    document = document or {}
    image_set = document.get("image_set")
    return RDCurve(
        name, label, source, bpp, quality, _lambdas(document, len(bpp)), _per_image(document, len(bpp)),
        None if image_set is None else str(image_set),
    )


def reference_curves() -> dict[str, Mapping[str, Any]]:
    """The shipped published curves, by key (without the `ref:` prefix)."""
    text = resources.files("model").joinpath("reference", REFERENCE_FILE).read_text(encoding="utf-8")
    return json.loads(text)["curves"]


def load_reference(key: str) -> RDCurve:
    """`ref:<key>` as a curve; raises naming the known keys."""
    curves = reference_curves()
    if key not in curves:
        raise ValueError(f"unknown reference curve {REFERENCE_PREFIX}{key}; known: {', '.join(sorted(curves))}")
    entry = curves[key]
    name = f"{REFERENCE_PREFIX}{key}"
    return _curve(name, entry["name"], name, entry["results"], {"image_set": entry.get("dataset")})


def load_results(path: Path) -> RDCurve:
    """A results JSON (`segpic eval` or CompressAI `eval_model` layout) as a curve named by its `name`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read results JSON ({error})") from error
    if not isinstance(document, Mapping):
        raise ValueError(f"{path}: results JSON must hold an object")
    name = str(document.get("name") or Path(path).stem)
    return _curve(name, name, str(path), document.get("results"), document)


def load_curve(spec: str) -> RDCurve:
    """`ref:<key>` for a published curve, anything else a results JSON path."""
    if spec.startswith(REFERENCE_PREFIX):
        return load_reference(spec[len(REFERENCE_PREFIX) :])
    return load_results(Path(spec))


def is_reference(name: str) -> bool:
    return name.startswith(REFERENCE_PREFIX)
