"""The RD plot of a comparison: one panel per quality metric, explaining itself.

The title names what the curves were measured on and the anchor; every point is labelled
with its λ where known; each curve's legend entry carries its BD-rate against the anchor
with the 95 % interval (or n/a). MS-SSIM is drawn in dB, as CompressAI plots it. Drawn
with matplotlib's object API on Agg, so no display is needed.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from model.rd_curves import QUALITY_METRICS, RDCurve, is_reference


def _title(curves: Sequence[RDCurve], anchor: str, method: str) -> str:
    sets = []
    for curve in curves:
        if curve.image_set is None:
            continue
        count = f" ({len(curve.per_image.images)} images)" if curve.per_image is not None else ""
        if f"{curve.image_set}{count}" not in sets:
            sets.append(f"{curve.image_set}{count}")
    measured = ", ".join(sets) if sets else "unnamed images"
    return f"{measured}; BD-rate against {anchor} ({method}), 95 % bootstrap interval over images"


def plot_curves(
    curves: Sequence[RDCurve], legends: Mapping[str, Mapping[str, str]], anchor: str, method: str, path: Path
) -> None:
    """RD plot, one panel per metric any curve has; `legends[curve][metric]` labels each line.

    A curve keeps its colour across panels.
    """
    metrics = [metric for metric in QUALITY_METRICS.values() if any(metric.name in c.quality for c in curves)]
    figure = Figure(figsize=(7 * max(len(metrics), 1), 5.2), layout="constrained")
    for axes, metric in zip(figure.subplots(1, max(len(metrics), 1), squeeze=False)[0], metrics):
        for index, curve in enumerate(curves):
            if metric.name not in curve.quality:
                continue
            known = curve.lambdas is not None and all(value is not None for value in curve.lambdas)
            key = curve.lambdas.__getitem__ if known else curve.bpp.__getitem__
            order = sorted(range(len(curve.bpp)), key=key)
            xs = [curve.bpp[i] for i in order]
            ys = [curve.quality[metric.name][i] for i in order]
            color = f"C{index % 10}"
            axes.plot(
                xs, ys, marker="o", color=color,
                linestyle="--" if is_reference(curve.name) else "-",
                linewidth=2.5 if curve.name == anchor else 1.5,
                label=legends[curve.name][metric.name],
            )
            if known:
                for i, x, y in zip(order, xs, ys):
                    axes.annotate(f"λ={curve.lambdas[i]:g}", (x, y), textcoords="offset points",
                                  xytext=(4, -10 if index % 2 else 4), fontsize="x-small", color=color)
        axes.set_xlabel("bits per pixel")
        axes.set_ylabel(metric.label)
        axes.set_title(metric.title)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small", loc="lower right")
    figure.suptitle(_title(curves, anchor, method), fontsize="medium")
    figure.savefig(path, dpi=120)
