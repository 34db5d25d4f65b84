"""The codec round trip `benchmarks/bench_model.py` reports on a GPU, run on the CPU with a
small model: it must finish and report identical symbols, so the one GPU run is not wasted."""

import sys
from pathlib import Path

import pytest

from test_portable import photo
from random_codecs import random_segpic, spread_scales

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_round_trip_report_names_both_modes_and_identical_symbols(capsys):
    model = spread_scales(random_segpic(0)).eval()
    model.update(force=True)
    bench_model.cross_device_round_trip(model, photo(128, 128))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" round trip")[0] for line in lines] == ["portable", "published-compatible"]
    assert all("symbols identical True" in line and "(difference 0.0000 dB" in line for line in lines)
