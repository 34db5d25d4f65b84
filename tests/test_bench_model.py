"""The codec round trip `benchmarks/bench_model.py` reports on a GPU, run on the CPU with a
small model: it must finish and report identical symbols, so the one GPU run is not wasted."""

import sys
from pathlib import Path

import pytest

from random_codecs import photo, random_segpic, spread_scales

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_round_trip_of_both_modes_gives_identical_symbols_and_pictures():
    model = spread_scales(random_segpic(0)).eval()
    model.update(force=True)
    trips = bench_model.cross_device_round_trip(model, photo(128, 128))
    assert [trip.mode for trip in trips] == ["portable", "published-compatible"]
    assert all(trip.symbols_identical and trip.difference < 0.00005 for trip in trips)
