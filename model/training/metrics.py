"""Training metrics: dvclive series and plots while running, one JSON summary at the end."""

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from dvclive import Live
from scmrepo.exceptions import SCMError

from pipeline.atomic_files import write_bytes_atomically

LOGGED_TERMS = ("loss", "bpp", "mse", "aux_loss")
"""The order of the values a training step returns as one tensor."""


@dataclass
class RunningMean:
    """Means of the steps' `LOGGED_TERMS` since the last `take`, summed where the steps ran.

    Values stay on the training device until `take`, so steps do not wait for the host.
    """

    total: torch.Tensor | None = None
    count: int = 0

    def add(self, values: torch.Tensor) -> None:
        self.total = values.clone() if self.total is None else self.total + values
        self.count += 1

    def take(self) -> dict[str, float]:
        if not self.count:
            return {}
        means = dict(zip(LOGGED_TERMS, (self.total / self.count).tolist()))
        self.total, self.count = None, 0
        return {**means, "psnr": psnr(means["mse"])}


def psnr(mse: float) -> float:
    """PSNR in dB of images in [0, 1]."""
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


def truncate_series(directory: Path, step: int) -> None:
    """Drop every logged row after `step` and rebuild dvclive's summary from what is left.

    A killed run logged steps after its last checkpoint; the resumed run trains and logs
    them again, so without this the series would hold those steps twice.
    """
    summary: dict = {"step": step}
    for series in sorted((directory / "plots" / "metrics").rglob("*.tsv")):
        with series.open(newline="") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t"))
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) != len(rows):
            _rewrite_series(series, list(rows[0]) if rows else [], kept)
        if kept:
            name = series.relative_to(directory / "plots" / "metrics").with_suffix("")
            *groups, leaf = name.parts
            node = summary
            for group in groups:
                node = node.setdefault(group, {})
            node[leaf] = float(kept[-1][name.name])
    summary_path = directory / "metrics.json"
    if summary_path.exists():
        write_bytes_atomically(summary_path, (json.dumps(summary, indent=4) + "\n").encode())


def _rewrite_series(series: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomically(series, buffer.getvalue().encode())


class MetricsLog:
    """dvclive writer of `train/*` and `val/*` series keyed by optimiser step (rank 0 only).

    `resume_at`: the step a resumed run continues from (its series are cut back to it);
    None starts the series afresh.
    """

    def __init__(self, directory: Path, resume_at: int | None) -> None:
        if resume_at is not None:
            truncate_series(directory, resume_at)
        # dvcyaml=False: the project's dvc.yaml declares plots itself; dvclive must not rewrite it.
        try:
            self._live = Live(str(directory), resume=resume_at is not None, save_dvc_exp=False, dvcyaml=False)
        except SCMError as error:  # dvclive reads HEAD before checking that the repository has one
            raise ValueError(
                f"dvclive cannot log to {directory} inside a git repository with no commits yet ({error}); "
                "make a first commit, or run outside the repository"
            ) from error

    def log(self, step: int, prefix: str, values: dict[str, float]) -> None:
        self._live.step = step
        for name, value in values.items():
            self._live.log_metric(f"{prefix}/{name}", value)
        self._live.next_step()

    def close(self) -> None:
        self._live.end()


@dataclass
class Tracker:
    """Running means of the loss terms and the latest logged values, mirrored to dvclive on rank 0."""

    metrics: MetricsLog | None
    window: RunningMean = field(default_factory=RunningMean)
    since_validation: RunningMean = field(default_factory=RunningMean)
    last: dict[str, dict[str, float]] = field(default_factory=lambda: {"train": {}, "val": {}})

    def add(self, values: torch.Tensor) -> None:
        self.window.add(values)
        self.since_validation.add(values)

    def log_train(self, step: int, lr: float) -> None:
        if not self.window.count:
            return
        self.last["train"] = {**self.window.take(), "lr": lr}
        if self.metrics:
            self.metrics.log(step, "train", self.last["train"])

    def log_validation(self, step: int, values: dict[str, float]) -> float:
        """Record validation means; returns the loss the plateau schedule watches.

        Without a validation set that is the mean training loss since the last call.
        """
        training = self.since_validation.take()
        self.last["val"] = values
        if self.metrics and values:
            self.metrics.log(step, "val", values)
        return values.get("loss", training.get("loss", math.nan))


def write_summary(path: Path, summary: dict) -> None:
    """Atomically write the run's final metrics JSON (the DVC stage's metrics file)."""
    write_bytes_atomically(path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())


def read_summary(path: Path) -> dict:
    """The summary a (spawned) rank 0 wrote."""
    return json.loads(path.read_text())
