"""Training metrics: dvclive series and plots while running, one JSON summary at the end."""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from dvclive import Live
from scmrepo.exceptions import SCMError


@dataclass
class RunningMean:
    """Means of named values over the steps since the last `take`."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def take(self) -> dict[str, float]:
        means = {name: total / self.count for name, total in self.sums.items()} if self.count else {}
        self.sums, self.count = {}, 0
        return means


def psnr(mse: float) -> float:
    """PSNR in dB of images in [0, 1]."""
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


class MetricsLog:
    """dvclive writer of `train/*` and `val/*` series keyed by optimiser step (rank 0 only)."""

    def __init__(self, directory: Path, resume: bool) -> None:
        # dvcyaml=False: the project's dvc.yaml declares plots itself; dvclive must not rewrite it.
        try:
            self._live = Live(str(directory), resume=resume, save_dvc_exp=False, dvcyaml=False)
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

    def add(self, values: dict[str, float]) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".incomplete")
    partial.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def read_summary(path: Path) -> dict:
    """The summary a (spawned) rank 0 wrote."""
    return json.loads(path.read_text())
