"""bf16 autocast trains what fp32 trains: the loss curves of the same tiny run in both, window by window.

Same data, seed and learning rate (the published 1e-4): `--steps` tiny-preset steps through
`segpic train` on the `sample` photos with grid masks (10×10 cells, about 48-pixel blocks),
logged every 10 steps, once in fp32 and once with `--bf16`, each in a fresh interpreter (global
torch state that other code leaves behind stays out), both at once (the tiny preset trains on
one thread). Prints each window's mean logged loss in both and their relative difference, then
the largest difference after the first window beside the 2 % the bf16 path is held to.

From tests/test_train_speed.py, where it was a 300-step test (measured there on a 2-core CPU:
at most 0.52 %; fp32 with two threads instead of one: 0.36 %). At twice the learning rate
training is chaotic (loss spikes whose timing depends on the last bits): fp32 with two threads
then differs from fp32 with one by 4.4 % in a window, so no two runs whose numerics differ at
all can be held to 2 % there.

Run: .venv/bin/python benchmarks/bench_bf16_training.py [--steps 300] [--window 50]
"""

import argparse
import csv
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOG_EVERY = 10
BOUND = 0.02
SEGPIC = str(Path(sys.executable).parent / "segpic")


@dataclass(frozen=True)
class Window:
    """Mean logged training loss over steps (`first`, `last`] in fp32 and in bf16."""

    first: int
    last: int
    fp32: float
    bf16: float

    @property
    def difference(self) -> float:
        return abs(self.bf16 - self.fp32) / self.fp32


def _segpic(*arguments: str) -> None:
    result = subprocess.run([SEGPIC, *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"segpic {' '.join(arguments)} failed:\n{result.stderr}")


def _loss_means(live: Path, rows: int) -> list[float]:
    """Means of the logged training loss over consecutive windows of `rows` log rows."""
    with (live / "plots" / "metrics" / "train" / "loss.tsv").open(newline="") as stream:
        values = [float(row["loss"]) for row in csv.DictReader(stream, delimiter="\t")]
    return [sum(values[i : i + rows]) / rows for i in range(0, len(values) - rows + 1, rows)]


def compare_curves(work: Path, steps: int, window: int) -> list[Window]:
    """Train the two runs in `work` and return their loss windows of `window` steps."""
    images, masks = work / "images", work / "masks"
    _segpic("ingest", "sample", "--out", str(images), "--no-progress")
    _segpic("masks", str(images), "--generator", "grid", "--set", "grid=10", "--out", str(masks), "--no-progress")
    command = [
        SEGPIC, "train", "--images", str(images), "--partition", f"masks:{masks}", "--preset", "tiny", "--crop", "64",
        "--batch-size", "4", "--steps", str(steps), "--val-every", str(steps), "--checkpoint-every", str(steps),
        "--log-every", str(LOG_EVERY), "--lr", "1e-4", "--no-progress",
    ]
    runs = {"fp32": (), "bf16": ("--bf16",)}
    started = {name: subprocess.Popen([*command, "--out", str(work / name), *extra], stderr=subprocess.PIPE) for name, extra in runs.items()}
    for name, process in started.items():
        _, errors = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"the {name} run failed:\n{errors.decode()}")
    fp32, bf16 = (_loss_means(work / name / "live", window // LOG_EVERY) for name in runs)
    return [Window(index * window, (index + 1) * window, ours, theirs) for index, (ours, theirs) in enumerate(zip(fp32, bf16))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=50, help=f"steps per window, a multiple of {LOG_EVERY}")
    args = parser.parse_args()
    if args.window % LOG_EVERY or args.steps < 2 * args.window:
        parser.error(f"--window must be a multiple of {LOG_EVERY} and --steps at least two windows")
    with tempfile.TemporaryDirectory() as work:
        windows = compare_curves(Path(work), args.steps, args.window)
    print(f"tiny preset, lr 1e-4, {args.steps} steps: mean training loss per {args.window}-step window")
    print("| steps | fp32 | bf16 | difference |\n|---|---|---|---|")
    for window in windows:
        print(f"| {window.first}-{window.last} | {window.fp32:.4f} | {window.bf16:.4f} | {100 * window.difference:.2f} % |")
    largest = max(window.difference for window in windows[1:])
    print(f"largest difference after the first window: {100 * largest:.2f} % (bound {100 * BOUND:.0f} %: "
          f"{'within' if largest <= BOUND else 'OUTSIDE'})")


if __name__ == "__main__":
    main()
