"""`benchmarks/bench_bf16_training.py`, the bf16-against-fp32 loss-curve comparison, in a smoke run: both
precisions train to the end through `segpic train` and each window holds a loss of both."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_bf16_training  # noqa: E402


def test_both_precisions_train_and_every_window_compares_them(tmp_path):
    windows = bench_bf16_training.compare_curves(tmp_path, steps=20, window=10)
    assert [(window.first, window.last) for window in windows] == [(0, 10), (10, 20)]
    assert all(math.isfinite(loss) and loss > 0 for window in windows for loss in (window.fp32, window.bf16))
    assert all(math.isfinite(window.difference) for window in windows)
