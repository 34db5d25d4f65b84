"""Compare rate-distortion curves by Bjøntegaard delta, with 95 % intervals: tables, JSON, plot.

Every curve is compared with one anchor on every quality metric both have. A metric a
curve lacks, or a pair whose curves fail the BD checks (`model.bdrate`), is reported as
n/a with the reason rather than a number or a failure of the whole comparison. Where both
curves carry per-image results on the same images, each BD value gets a bootstrap
interval over the images (`model.bd_bootstrap`) and a verdict: better, worse, or within
noise.
"""

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.bd_bootstrap import BootstrapSettings, Interval, bootstrap_bd, no_interval, verdict
from model.bdrate import DEFAULT_METHOD, DEFAULT_MIN_OVERLAP, METHODS, BDError, bd_quality_of, bd_rate_of, rd_points
from model.rd_curves import QUALITY_METRICS, RDCurve, is_reference, load_curve
from model.rd_plot import plot_curves


@dataclass(frozen=True)
class BDResult:
    """One curve against the anchor on one metric; values are None (n/a) with a `note` why."""

    bd_rate_percent: float | None
    bd_quality_db: float | None
    note: str | None = None


@dataclass(frozen=True)
class Uncertainty:
    """The intervals of one BDResult and what they say."""

    bd_rate: Interval
    bd_quality: Interval

    @property
    def rate_verdict(self) -> str | None:
        return verdict(self.bd_rate, "fewer bits", "more bits")

    @property
    def quality_verdict(self) -> str | None:
        return verdict(self.bd_quality, "lower quality", "higher quality")

    def to_json(self) -> dict[str, Any]:
        return {
            "bd_rate_interval": _bounds(self.bd_rate),
            "bd_rate_verdict": self.rate_verdict,
            "bd_quality_interval": _bounds(self.bd_quality),
            "bd_quality_verdict": self.quality_verdict,
            "resamples_used": self.bd_rate.valid,
            "note": self.bd_rate.note,
        }


def _bounds(interval: Interval) -> list[float] | None:
    return None if interval.low is None else [interval.low, interval.high]


def _without(note: str) -> Uncertainty:
    return Uncertainty(*no_interval(note))


@dataclass(frozen=True)
class ComparisonSettings:
    method: str = DEFAULT_METHOD
    min_overlap: float = DEFAULT_MIN_OVERLAP
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown BD interpolation {self.method!r}; known: {', '.join(METHODS)}")
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"--min-overlap must be in (0, 1], got {self.min_overlap}")


def bd_against(anchor: RDCurve, curve: RDCurve, metric: str, settings: ComparisonSettings) -> tuple[BDResult, Uncertainty]:
    """BD-rate and BD-quality of `curve` vs `anchor` on `metric` with their intervals, or n/a with the reason."""
    missing = list(dict.fromkeys(c.name for c in (anchor, curve) if metric not in c.quality))
    if missing:
        note = f"no {metric} points in {', '.join(missing)}"
        return BDResult(None, None, note), _without(note)
    try:
        anchor_points = rd_points(anchor.name, anchor.bpp, anchor.quality[metric], anchor.lambdas, settings.method)
        points = rd_points(curve.name, curve.bpp, curve.quality[metric], curve.lambdas, settings.method)
        result = BDResult(
            bd_rate_of(anchor_points, points, settings.method, settings.min_overlap),
            bd_quality_of(anchor_points, points, settings.method, settings.min_overlap),
        )
    except BDError as error:
        return BDResult(None, None, str(error)), _without(str(error))
    if curve.name == anchor.name:
        return result, _without("the anchor")
    samples = [c.samples(metric) for c in (anchor, curve)]
    if samples[0] is None or samples[1] is None:
        lacking = ", ".join(c.name for c, s in zip((anchor, curve), samples) if s is None)
        return result, _without(f"no per-image results in {lacking}")
    rate, quality = bootstrap_bd(samples[0], samples[1], settings.method, settings.min_overlap, settings.bootstrap)
    return result, Uncertainty(rate, quality)


@dataclass(frozen=True)
class ComparisonRow:
    curve: str
    label: str
    points: int
    results: Mapping[str, BDResult]
    uncertainty: Mapping[str, Uncertainty] = field(default_factory=dict)


def compare_curves(
    curves: Sequence[RDCurve], anchor: str, settings: ComparisonSettings = ComparisonSettings()
) -> list[ComparisonRow]:
    """One row per curve (anchor included, at zero), every quality metric against `anchor`."""
    by_name = {curve.name: curve for curve in curves}
    if anchor not in by_name:
        raise ValueError(f"anchor {anchor!r} is none of the curves: {', '.join(by_name)}")
    rows = []
    for curve in curves:
        measured = {metric: bd_against(by_name[anchor], curve, metric, settings) for metric in QUALITY_METRICS}
        rows.append(ComparisonRow(
            curve.name, curve.label, len(curve.bpp),
            {metric: pair[0] for metric, pair in measured.items()},
            {metric: pair[1] for metric, pair in measured.items()},
        ))
    return rows


def _cell(value: float | None, unit: str, digits: int) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}{unit}"


def _interval_cell(interval: Interval, digits: int) -> str:
    return "" if interval.low is None else f"[{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"


def verdict_line(row: ComparisonRow, metric: str, anchor: str, anchor_label: str) -> str | None:
    """'felzenszwalb vs grid, PSNR: BD-rate -3.1 % [-5.0, -1.2]: fewer bits; BD-PSNR ...', or None without a value.

    Resamples left out of the interval are counted at the end of the line, as they are in the JSON.
    """
    result, uncertainty = row.results[metric], row.uncertainty.get(metric)
    if result.bd_rate_percent is None or row.curve == anchor or uncertainty is None:
        return None
    title = QUALITY_METRICS[metric].title
    parts = []
    for name, value, unit, interval, judged in (
        ("BD-rate", result.bd_rate_percent, " %", uncertainty.bd_rate, uncertainty.rate_verdict),
        (f"BD-{title}", result.bd_quality_db, " dB", uncertainty.bd_quality, uncertainty.quality_verdict),
    ):
        bounds = _interval_cell(interval, 2 if unit == " %" else 3)
        parts.append(f"{name} {value:+.{2 if unit == ' %' else 3}f}{unit}" + (f" {bounds}: {judged}" if bounds else ""))
    note = uncertainty.bd_rate.note
    reason = f" (no interval: {note})" if uncertainty.bd_rate.low is None else f" ({note})" if note else ""
    return f"{row.label} vs {anchor_label}, {title}: " + "; ".join(parts) + reason


def legend_text(row: ComparisonRow, metric: str, anchor: str) -> str:
    """A curve's legend entry on one metric's panel: its BD-rate against the anchor with the interval, or n/a."""
    if row.curve == anchor:
        return f"{row.label} (anchor)"
    result, uncertainty = row.results[metric], row.uncertainty.get(metric)
    if result.bd_rate_percent is None:
        return f"{row.label}: BD-rate n/a"
    text = f"{row.label}: BD-rate {result.bd_rate_percent:+.1f} %"
    if uncertainty is not None and uncertainty.bd_rate.low is not None:
        text += f" [{uncertainty.bd_rate.low:+.1f}, {uncertainty.bd_rate.high:+.1f}]"
    return text


def _image_set_line(curves: Sequence[RDCurve]) -> str:
    measured = [curve for curve in curves if curve.per_image is not None]
    if not measured:
        return ""
    sets = sorted({f"{curve.image_set or 'images'} ({len(curve.per_image.images)} images)" for curve in measured})
    return f"Measured on {', '.join(sets)}. "


def markdown_table(
    rows: Sequence[ComparisonRow], anchor: str, settings: ComparisonSettings, curves: Sequence[RDCurve] = ()
) -> str:
    """The comparison as a Markdown table with 95 % intervals, then a verdict per curve and the n/a reasons."""
    header = ["Curve", "Points"]
    for metric in QUALITY_METRICS.values():
        header += [f"BD-rate {metric.title}", "95 % CI", f"BD-{metric.title}", "95 % CI"]
    lines = [
        f"BD-rate against **{anchor}** ({settings.method} Bjøntegaard fit, curves sharing at least "
        f"{settings.min_overlap:.0%} of their range; negative = fewer bits at equal quality). "
        + _image_set_line(curves)
        + f"Intervals: 95 % bootstrap over the images ({settings.bootstrap.resamples} resamples, seed "
        f"{settings.bootstrap.seed}), paired between the curves.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    notes, verdicts = [], []
    anchor_label = next(row.label for row in rows if row.curve == anchor)
    for row in rows:
        cells = [row.label if row.label == row.curve else f"{row.label} (`{row.curve}`)", str(row.points)]
        for metric, result in row.results.items():
            uncertainty = row.uncertainty.get(metric) or _without("")
            cells += [
                _cell(result.bd_rate_percent, " %", 2), _interval_cell(uncertainty.bd_rate, 2),
                _cell(result.bd_quality_db, " dB", 3), _interval_cell(uncertainty.bd_quality, 3),
            ]
            if result.note and row.curve != anchor:
                notes.append(f"- {row.curve}, {metric}: n/a, {result.note}")
            line = verdict_line(row, metric, anchor, anchor_label)
            if line:
                verdicts.append(f"- {line}")
        lines.append("| " + " | ".join(cells) + " |")
    for block in (verdicts, notes):
        if block:
            lines += [""] + block
    return "\n".join(lines) + "\n"


def comparison_document(
    rows: Sequence[ComparisonRow], anchor: str, settings: ComparisonSettings, curves: Sequence[RDCurve] = ()
) -> dict[str, Any]:
    """The comparison as JSON-ready data (None for n/a)."""
    by_name = {curve.name: curve for curve in curves}
    return {
        "anchor": anchor,
        "method": settings.method,
        "min_overlap": settings.min_overlap,
        "bootstrap": {"resamples": settings.bootstrap.resamples, "seed": settings.bootstrap.seed, "confidence": 0.95},
        "metrics": list(QUALITY_METRICS),
        "rows": [
            {"curve": row.curve, "label": row.label, "points": row.points,
             "image_set": getattr(by_name.get(row.curve), "image_set", None),
             "lambdas": getattr(by_name.get(row.curve), "lambdas", None),
             "results": {metric: asdict(result) for metric, result in row.results.items()},
             "uncertainty": {metric: value.to_json() for metric, value in row.uncertainty.items()}}
            for row in rows
        ],
    }


def write_points_csv(curves: Sequence[RDCurve], path: Path) -> None:
    """Every point of every curve, one row each (for `dvc plots` and spreadsheets)."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["curve", "lmbda", "bpp", *QUALITY_METRICS])
        for curve in curves:
            for index, bpp in enumerate(curve.bpp):
                values = [curve.quality[m][index] if m in curve.quality else "" for m in QUALITY_METRICS]
                lmbda = curve.lambdas[index] if curve.lambdas and curve.lambdas[index] is not None else ""
                writer.writerow([curve.name, lmbda, bpp, *values])


@dataclass(frozen=True)
class CurveSelection:
    """Which curves of the inputs' folders belong to the study: `names` (the anchor always does), from `source`."""

    names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class CompareConfig:
    """`inputs`: results JSON paths, folders of them and `ref:<key>` names; `anchor`: a curve name (a `ref:` one is added if absent)."""

    inputs: tuple[str, ...]
    anchor: str
    out: Path
    settings: ComparisonSettings = field(default_factory=ComparisonSettings)
    selection: CurveSelection | None = None


@dataclass(frozen=True)
class CompareOutputs:
    table_json: Path
    table_markdown: Path
    plot: Path
    points: Path
    rows: tuple[ComparisonRow, ...]
    left_out: tuple[str, ...] = ()


def _expand(spec: str) -> list[str]:
    """A folder stands for the results JSON files in it, in name order."""
    path = Path(spec)
    if is_reference(spec) or not path.is_dir():
        return [spec]
    found = sorted(str(child) for child in path.glob("*.json"))
    if not found:
        raise ValueError(f"{path}: no results JSON files (segpic eval --out) in this folder")
    return found


def _select(curves: list[RDCurve], config: CompareConfig) -> tuple[list[RDCurve], list[str]]:
    """The curves of the study and a line for each curve left out; a listed curve that is missing raises."""
    selection = config.selection
    if selection is None:
        return curves, []
    wanted = set(selection.names) | {config.anchor}
    present = {curve.name for curve in curves}
    missing = sorted(name for name in wanted if name not in present)
    if missing:
        raise ValueError(f"no results for {', '.join(missing)} (listed in {selection.source}) among the inputs")
    kept = [curve for curve in curves if curve.name in wanted or is_reference(curve.name)]
    left_out = [f"left out {curve.source}: {curve.name} is not in {selection.source}" for curve in curves
                if curve not in kept]
    return kept, left_out


def run_comparison(config: CompareConfig) -> CompareOutputs:
    """Load the curves, compare them with the anchor, and write bdrate.json, bdrate.md, rd.png, rd_points.csv."""
    specs = [expanded for spec in config.inputs for expanded in _expand(spec)]
    if is_reference(config.anchor) and config.anchor not in specs:
        specs.insert(0, config.anchor)
    curves, left_out = _select([load_curve(spec) for spec in specs], config)
    names = [curve.name for curve in curves]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"several inputs are named {', '.join(duplicates)}; give each curve its own --name")
    rows = compare_curves(curves, config.anchor, config.settings)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = CompareOutputs(
        out / "bdrate.json", out / "bdrate.md", out / "rd.png", out / "rd_points.csv", tuple(rows), tuple(left_out)
    )
    document = comparison_document(rows, config.anchor, config.settings, curves)
    outputs.table_json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    outputs.table_markdown.write_text(markdown_table(rows, config.anchor, config.settings, curves), encoding="utf-8")
    legends = {row.curve: {metric: legend_text(row, metric, config.anchor) for metric in row.results} for row in rows}
    plot_curves(curves, legends, config.anchor, config.settings.method, outputs.plot)
    write_points_csv(curves, outputs.points)
    return outputs
