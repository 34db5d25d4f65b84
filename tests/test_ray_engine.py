"""`--engine ray` on a local Ray instance writes exactly what the local engine writes."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from pipeline.manifest import read_manifest
from pipeline.masks import MasksConfig, make_masks
from pipeline.shards import list_shards


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_shards(sample_image_shards, tmp_path, local_ray):
    def run(engine: str):
        out = tmp_path / engine
        config = MasksConfig(
            images=sample_image_shards, out=out, generator="felzenszwalb",
            options=(("scale", "800"), ("max_regions", "30")), engine=engine, workers=1,
        )
        return make_masks(config), out

    local_summary, local_out = run("local")
    ray_summary, ray_out = run("ray")
    assert ray_summary.written == local_summary.written and ray_summary.complete
    assert [path.name for path in list_shards(ray_out)] == [path.name for path in list_shards(local_out)]
    for path in list_shards(local_out):
        assert (ray_out / path.name).read_bytes() == path.read_bytes()
    assert read_manifest(ray_out).shards == read_manifest(local_out).shards


IMPORT_WARNING_LINES = ("  warnings.warn(", "/")  # torch's FutureWarning on import, not ours


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("address", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_unreachable_cluster_fails_fast_in_one_line(sample_image_shards, tmp_path, address):
    address = address.format(port=free_port())  # nothing listens there
    args = ["masks", str(sample_image_shards), "--out", str(tmp_path / "masks"), "--generator", "grid",
            "--engine", "ray", "--ray-address", address, "--no-progress"]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", *args], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith(IMPORT_WARNING_LINES)] == [
        f"error: Ray cluster {address} is unreachable (Connection refused); is the head node running?"
    ]
    assert not list((tmp_path / "masks").glob("*.parquet"))


def test_the_ray_client_is_installed():
    from ray.util.client import ray as client  # needs grpcio, the `ray[client]` extra

    assert not client.is_connected()
