"""`--engine ray` on a local Ray instance and on a head node through the Ray client writes exactly what the local engine writes."""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import ray
from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

from pipeline.manifest import read_manifest
from pipeline.masks import MasksConfig, make_masks
from pipeline.ray_engine import CLIENT_ATTEMPTS, RayUnreachable, connect
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
            options=(("scale", "800"), ("max_regions", "30")), engine=engine, workers=1, keep_raw=True,
        )
        return make_masks(config), out

    local_summary, local_out = run("local")
    ray_summary, ray_out = run("ray")
    assert ray_summary.written == local_summary.written and ray_summary.complete
    for ours, theirs in ((ray_out, local_out), (ray_summary.raw, local_summary.raw)):
        assert [path.name for path in list_shards(ours)] == [path.name for path in list_shards(theirs)]
        for path in list_shards(theirs):
            assert (ours / path.name).read_bytes() == path.read_bytes()
        assert read_manifest(ours).shards == read_manifest(theirs).shards


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
    result = run_segpic(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert our_lines(result.stderr) == [
        f"error: Ray cluster {address} is unreachable (Connection refused); is the head node running?"
    ]
    assert not list((tmp_path / "masks").glob("*.parquet"))


@pytest.mark.parametrize("address", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_the_address_is_probed_before_ray_is_asked(monkeypatch, address):
    """Ray would retry an unreachable cluster for minutes; the probe's refusal comes first, and Ray is never called."""
    address = address.format(port=free_port())
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: pytest.fail(f"ray.init({options}) was called"))
    with pytest.raises(RayUnreachable, match=rf"^Ray cluster {re.escape(address)} is unreachable \(Connection refused\)"):
        connect(address)


def run_segpic(*args: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300, env=environment)


def our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith(IMPORT_WARNING_LINES)]


def test_the_ray_client_is_installed():
    from ray.util.client import ray as client  # needs grpcio, the `ray[client]` extra

    assert not client.is_connected()


class SessionsThatFailToStart(ray_client_pb2_grpc.RayletDriverServicer, ray_client_pb2_grpc.RayletDataStreamerServicer,
                              ray_client_pb2_grpc.RayletLogStreamerServicer):
    """A Ray client server whose per-connection session process dies while starting, answering as Ray's proxier does."""

    REASON = "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs."

    def __init__(self) -> None:
        self.sessions = 0

    def ClusterInfo(self, request, context):
        return ray_client_pb2.ClusterInfoResponse(json=json.dumps(True))

    def Datapath(self, requests, context):
        init = next(requests)
        self.sessions += 1
        yield ray_client_pb2.DataResponse(req_id=init.req_id, init=ray_client_pb2.InitResponse(
            ok=False, msg=f"Traceback (most recent call last):\n  File \"proxier.py\", line 770, in Datapath\n{self.REASON}\n"))

    def Logstream(self, requests, context):
        yield from ()  # no logs; the stream stays open until the client closes it
        for _ in requests:
            pass


@pytest.mark.slow
def test_a_session_that_fails_to_start_is_retried_then_fails_in_one_line(sample_image_shards, tmp_path):
    servicer = SessionsThatFailToStart()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ray_client_pb2_grpc.add_RayletDriverServicer_to_server(servicer, server)
    ray_client_pb2_grpc.add_RayletDataStreamerServicer_to_server(servicer, server)
    ray_client_pb2_grpc.add_RayletLogStreamerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"ray://127.0.0.1:{port}"
        started = time.monotonic()
        result = run_segpic("masks", str(sample_image_shards), "--out", str(tmp_path / "masks"), "--generator", "grid",
                            "--engine", "ray", "--ray-address", address, "--no-progress")
        assert time.monotonic() - started < 60
    finally:
        server.stop(0)
    assert servicer.sessions == CLIENT_ATTEMPTS, result.stderr[-3000:]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # Ray's client reads the server's answer, or sees the stream the server closed after it: either is one line.
    *retries, error = our_lines(result.stderr)
    assert [line.rpartition("; ")[2] for line in retries] == [f"retrying ({attempt} of {CLIENT_ATTEMPTS})" for attempt in range(2, CLIENT_ATTEMPTS + 1)]
    assert all(line.startswith(f"Ray cluster {address}: the server failed to start a session (") for line in retries)
    assert error.startswith(f"error: Ray cluster {address}: the server failed {CLIENT_ATTEMPTS} times to start a session (")
    assert not list((tmp_path / "masks").glob("*.parquet"))


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


# As the README says: without it the client server's session processes now and then die
# (SIGSEGV) between fork and exec, in threads gRPC's fork handler restarted in the child.
HEAD_ENVIRONMENT = {"GRPC_ENABLE_FORK_SUPPORT": "0"}


@pytest.fixture
def ray_cluster():
    """A real head node started as the README says, with its own auth token and temp dir; returns (address, environment).

    `ray stop` would stop every Ray on this machine, so the head runs with `--block` in its own
    process group: SIGTERM to `ray start` shuts its node down, then the group is killed for leftovers.
    """
    gcs_port, client_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    environment = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(gcs_port),
         "--ray-client-server-port", str(client_port), "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", temp_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**environment, **HEAD_ENVIRONMENT, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1"},  # nothing to drain: stop at once
    )
    try:
        wait_for_port(client_port, 120)
        yield f"ray://127.0.0.1:{client_port}", environment
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):  # whatever of the node outlived `ray start`
                os.killpg(head.pid, signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_masks_through_the_ray_client_match_the_local_engine(sample_image_shards, tmp_path, ray_cluster):
    address, environment = ray_cluster
    local = make_masks(MasksConfig(images=sample_image_shards, out=tmp_path / "local", generator="grid",
                                   options=(("grid", "3"),)))
    result = run_segpic("masks", str(sample_image_shards), "--out", str(tmp_path / "client"), "--generator", "grid",
                        "--set", "grid=3", "--engine", "ray", "--ray-address", address, "--workers", "1", "--no-progress",
                        environment=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "retrying" not in result.stderr, result.stderr[-3000:]  # the head as documented starts its session at once
    assert "wrote 3 shard(s), 10 image(s), 0 failed" in result.stdout and local.complete
    assert [path.name for path in list_shards(tmp_path / "client")] == [path.name for path in list_shards(tmp_path / "local")]
    for path in list_shards(tmp_path / "local"):
        assert (tmp_path / "client" / path.name).read_bytes() == path.read_bytes()
    assert read_manifest(tmp_path / "client").shards == read_manifest(tmp_path / "local").shards
    verified = run_segpic("verify", str(sample_image_shards), "--masks", str(tmp_path / "client"))
    assert verified.returncode == 0, verified.stderr[-2000:]
