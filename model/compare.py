"""Compare rate-distortion curves by Bjøntegaard delta: a table and an RD plot.

A curve is a list of (bpp, quality) points, one per trained rate (λ). Curves come from
`segpic eval` results (or any CompressAI `eval_model` JSON) and from the published
points shipped in `model/reference/published_curves.json`, named `ref:<key>` (e.g.
`ref:segpic`, `ref:wacnn`). Every curve is compared with one anchor on every quality
metric both have; a metric a curve lacks, or a pair without enough shared range, is
reported as n/a with the reason rather than failing the whole comparison.
MS-SSIM is compared in dB, -10·log10(1 - MS-SSIM), as learned-compression papers plot it.
"""

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from model.bdrate import BDError, bd_quality, bd_rate

REFERENCE_PREFIX = "ref:"
REFERENCE_FILE = "published_curves.json"


def _complete(results: Mapping[str, Sequence[float | None]], key: str) -> list[float] | None:
    """The values under `key`, or None when absent or when any point lacks it (e.g. MS-SSIM of tiny images)."""
    values = results.get(key)
    return None if values is None or any(value is None for value in values) else list(values)


def _ms_ssim_db(results: Mapping[str, Sequence[float | None]]) -> list[float] | None:
    if "ms-ssim-db" in results:
        return _complete(results, "ms-ssim-db")
    linear = _complete(results, "ms-ssim-rgb")
    return None if linear is None else [-10 * math.log10(max(1 - value, 1e-12)) for value in linear]


def _psnr(results: Mapping[str, Sequence[float | None]]) -> list[float] | None:
    return _complete(results, "psnr-rgb")


@dataclass(frozen=True)
class QualityMetric:
    """One quality axis: its name in tables, its plot label and how to read it (in dB) from results."""

    name: str
    title: str
    label: str
    read: Callable[[Mapping[str, Sequence[float | None]]], list[float] | None]


QUALITY_METRICS: dict[str, QualityMetric] = {
    metric.name: metric
    for metric in (
        QualityMetric("psnr", "PSNR", "PSNR (dB)", _psnr),
        QualityMetric("ms-ssim", "MS-SSIM", "MS-SSIM (dB)", _ms_ssim_db),
    )
}


@dataclass(frozen=True)
class RDCurve:
    """Points of one codec: `quality[metric]` aligns with `bpp`; metrics the source lacks are absent."""

    name: str
    label: str
    source: str
    bpp: tuple[float, ...]
    quality: Mapping[str, tuple[float, ...]]


def _curve(name: str, label: str, source: str, results: Mapping[str, Any]) -> RDCurve:
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
    return RDCurve(name, label, source, bpp, quality)


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
    return _curve(f"{REFERENCE_PREFIX}{key}", entry["name"], f"{REFERENCE_PREFIX}{key}", entry["results"])


def load_results(path: Path) -> RDCurve:
    """A results JSON (`segpic eval` or CompressAI `eval_model` layout) as a curve named by its `name`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read results JSON ({error})") from error
    if not isinstance(document, Mapping):
        raise ValueError(f"{path}: results JSON must hold an object")
    name = str(document.get("name") or Path(path).stem)
    return _curve(name, name, str(path), document.get("results"))


def load_curve(spec: str) -> RDCurve:
    """`ref:<key>` for a published curve, anything else a results JSON path."""
    if spec.startswith(REFERENCE_PREFIX):
        return load_reference(spec[len(REFERENCE_PREFIX) :])
    return load_results(Path(spec))


@dataclass(frozen=True)
class BDResult:
    """One curve against the anchor on one metric; values are None (n/a) with a `note` why."""

    bd_rate_percent: float | None
    bd_quality_db: float | None
    note: str | None = None


def bd_against(anchor: RDCurve, curve: RDCurve, metric: str, method: str = "cubic") -> BDResult:
    """BD-rate and BD-quality of `curve` vs `anchor` on `metric`, or n/a with the reason."""
    missing = list(dict.fromkeys(c.name for c in (anchor, curve) if metric not in c.quality))
    if missing:
        return BDResult(None, None, f"no {metric} points in {', '.join(missing)}")
    arguments = (anchor.bpp, anchor.quality[metric], curve.bpp, curve.quality[metric])
    try:
        return BDResult(bd_rate(*arguments, method=method), bd_quality(*arguments, method=method))
    except BDError as error:
        return BDResult(None, None, str(error))


@dataclass(frozen=True)
class ComparisonRow:
    curve: str
    label: str
    points: int
    results: Mapping[str, BDResult]


def compare_curves(curves: Sequence[RDCurve], anchor: str, method: str = "cubic") -> list[ComparisonRow]:
    """One row per curve (anchor included, at zero), every quality metric against `anchor`."""
    by_name = {curve.name: curve for curve in curves}
    if anchor not in by_name:
        raise ValueError(f"anchor {anchor!r} is none of the curves: {', '.join(by_name)}")
    reference = by_name[anchor]
    return [
        ComparisonRow(
            curve.name,
            curve.label,
            len(curve.bpp),
            {metric: bd_against(reference, curve, metric, method) for metric in QUALITY_METRICS},
        )
        for curve in curves
    ]


def _cell(value: float | None, unit: str, digits: int) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}{unit}"


def markdown_table(rows: Sequence[ComparisonRow], anchor: str, method: str) -> str:
    """The comparison as a Markdown table; n/a cells are explained below it."""
    header = ["Curve", "Points"]
    for metric in QUALITY_METRICS.values():
        header += [f"BD-rate {metric.title}", f"BD-{metric.title}"]
    lines = [
        f"BD-rate against **{anchor}** ({method} Bjøntegaard fit; negative = fewer bits at equal quality).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    notes = []
    for row in rows:
        cells = [row.label if row.label == row.curve else f"{row.label} (`{row.curve}`)", str(row.points)]
        for metric, result in row.results.items():
            cells += [_cell(result.bd_rate_percent, " %", 2), _cell(result.bd_quality_db, " dB", 3)]
            if result.note and row.curve != anchor:
                notes.append(f"- {row.curve}, {metric}: {result.note}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def comparison_document(rows: Sequence[ComparisonRow], anchor: str, method: str) -> dict[str, Any]:
    """The comparison as JSON-ready data (None for n/a)."""
    return {
        "anchor": anchor,
        "method": method,
        "metrics": list(QUALITY_METRICS),
        "rows": [
            {"curve": row.curve, "label": row.label, "points": row.points,
             "results": {metric: asdict(result) for metric, result in row.results.items()}}
            for row in rows
        ],
    }


def plot_curves(curves: Sequence[RDCurve], anchor: str, path: Path) -> None:
    """RD plot, one panel per metric any curve has; a curve keeps its colour across panels (Agg, no display)."""
    metrics = [metric for metric in QUALITY_METRICS.values() if any(metric.name in c.quality for c in curves)]
    figure = Figure(figsize=(6 * max(len(metrics), 1), 4.5), layout="constrained")
    for axes, metric in zip(figure.subplots(1, max(len(metrics), 1), squeeze=False)[0], metrics):
        for index, curve in enumerate(curves):
            if metric.name not in curve.quality:
                continue
            order = sorted(range(len(curve.bpp)), key=curve.bpp.__getitem__)
            axes.plot(
                [curve.bpp[i] for i in order],
                [curve.quality[metric.name][i] for i in order],
                marker="o",
                linestyle="--" if curve.name.startswith(REFERENCE_PREFIX) else "-",
                linewidth=2.5 if curve.name == anchor else 1.5,
                color=f"C{index % 10}",
                label=curve.label,
            )
        axes.set_xlabel("bits per pixel")
        axes.set_ylabel(metric.label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def write_points_csv(curves: Sequence[RDCurve], path: Path) -> None:
    """Every point of every curve, one row each (for `dvc plots` and spreadsheets)."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["curve", "bpp", *QUALITY_METRICS])
        for curve in curves:
            for index, bpp in enumerate(curve.bpp):
                values = [curve.quality[m][index] if m in curve.quality else "" for m in QUALITY_METRICS]
                writer.writerow([curve.name, bpp, *values])


@dataclass(frozen=True)
class CompareConfig:
    """`inputs`: results JSON paths and `ref:<key>` names; `anchor`: a curve name (a `ref:` one is added if absent)."""

    inputs: tuple[str, ...]
    anchor: str
    out: Path
    method: str = "cubic"


@dataclass(frozen=True)
class CompareOutputs:
    table_json: Path
    table_markdown: Path
    plot: Path
    points: Path
    rows: tuple[ComparisonRow, ...]


def run_comparison(config: CompareConfig) -> CompareOutputs:
    """Load the curves, compare them with the anchor, and write bdrate.json, bdrate.md, rd.png, rd_points.csv."""
    specs = list(config.inputs)
    if config.anchor.startswith(REFERENCE_PREFIX) and config.anchor not in specs:
        specs.insert(0, config.anchor)
    curves = [load_curve(spec) for spec in specs]
    names = [curve.name for curve in curves]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"several inputs are named {', '.join(duplicates)}; give each curve its own --name")
    rows = compare_curves(curves, config.anchor, config.method)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = CompareOutputs(out / "bdrate.json", out / "bdrate.md", out / "rd.png", out / "rd_points.csv", tuple(rows))
    document = comparison_document(rows, config.anchor, config.method)
    outputs.table_json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    outputs.table_markdown.write_text(markdown_table(rows, config.anchor, config.method), encoding="utf-8")
    plot_curves(curves, config.anchor, outputs.plot)
    write_points_csv(curves, outputs.points)
    return outputs
