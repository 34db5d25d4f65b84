"""`--engine ray`: the masks stage on Ray Data, writing exactly the local engine's layout.

The pending image shards are read as one Ray dataset (`read_parquet`, order preserved);
a pool of actors, each holding one generator (one actor per GPU where the cluster has
GPUs, else up to `workers` CPU actors), turns batches of rows into each output's rows with
the same `generate_outcomes` and outputs (`pipeline.shard_outputs`) the local engine uses (a
GPU actor takes `GPU_ROWS_PER_CALL` rows per call and feeds them to its generator's
`regions_batch`), and the driver streams them back, shard by shard in their original order,
through the same `write_outputs`. So shards, reports and manifests are identical whichever
engine made them.

`--ray-address`: empty starts a local instance; `ray://HOST:PORT` joins a cluster through
the Ray client (the `ray[client]` extra, installed with the project; with Ray's token
authentication set RAY_AUTH_MODE=token and the head's token); `HOST:PORT` joins
from a node of the cluster. The address is probed first, so an unreachable cluster fails
within `PROBE_TIMEOUT_S` with one line instead of Ray's retry loop; a session the client
server fails to start is asked for again, up to `CLIENT_ATTEMPTS` times.
"""

import importlib.util
import logging
import pickle
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy
from tqdm import tqdm

from pipeline.generators import build_generator
from pipeline.mask_labelling import ImageRecord, MasksConfig, decode_or_error, generate_outcomes
from pipeline.shard_outputs import Output, Plan, Rows, ShardReport, write_outputs

CLIENT_PREFIX = "ray://"
PROBE_TIMEOUT_S = 30  # a silent (firewalled) address fails after this, well within a minute
# The Ray client server forks one process per connection; unless the head runs with
# GRPC_ENABLE_FORK_SUPPORT=0, gRPC's fork handler now and then crashes that child before it
# execs (more often on a loaded head), which the client sees as "Initialization failure from
# server". A new connection gets a new process.
CLIENT_ATTEMPTS = 3
SESSION_CLOSED = "Request can't be sent because the Ray client has already been disconnected"
GPU_ROWS_PER_CALL = 16


class RayUnreachable(ValueError):
    """The Ray cluster named by `--ray-address` cannot be joined."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `ray://HOST:PORT` or `HOST:PORT`; None for forms only Ray resolves (`auto`)."""
    host, colon, port = address.removeprefix(CLIENT_PREFIX).rpartition(":")
    return (host, int(port)) if colon and host and port.isdigit() else None


def connect(address: str) -> None:
    """Join the cluster at `address`, or start a local instance when it is empty; one-line errors."""
    if ray.is_initialized():
        return
    target = _host_port(address) if address else None
    if target is not None:
        try:
            socket.create_connection(target, timeout=PROBE_TIMEOUT_S).close()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise RayUnreachable(f"Ray cluster {address} is unreachable ({reason}); is the head node running?") from error
    if address.startswith(CLIENT_PREFIX) and importlib.util.find_spec("grpc") is None:
        raise RayUnreachable(f"{address}: the Ray client is not installed (pip install 'ray[client]')")
    _join(address)


def _join(address: str) -> None:
    """`ray.init`, again with a new session where the client server failed to start one."""
    attempts = CLIENT_ATTEMPTS if address.startswith(CLIENT_PREFIX) else 1
    logging.getLogger("ray.client_builder").setLevel(logging.WARNING)  # not an INFO line per attempt listing our ray.init kwargs
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
            return
        except ConnectionError as error:
            if not _session_failed(error):
                raise _cannot_connect(address, error) from error
            reason = _last_line(error)
            if attempt == attempts:
                raise RayUnreachable(f"Ray cluster {address}: the server failed {attempts} times to start a session ({reason})") from error
            logging.getLogger(__name__).warning(
                f"Ray cluster {address}: the server failed to start a session ({reason}); retrying ({attempt + 1} of {attempts})"
            )
        except (TimeoutError, RuntimeError) as error:
            raise _cannot_connect(address, error) from error


def _session_failed(error: ConnectionError) -> bool:
    """The client server took the connection but could not start its session.

    Ray's client says "Initialization failure from server", or, when the server closed the
    session's stream before that answer was read, that the client is already disconnected.
    """
    return isinstance(error, ConnectionAbortedError) or str(error).startswith(SESSION_CLOSED)


def _cannot_connect(address: str, error: Exception) -> RayUnreachable:
    """One line for a failure to connect, with the cure for the commonest (a missing auth token)."""
    first_line = (str(error).splitlines() or [type(error).__name__])[0]
    hint = "; a cluster with token authentication needs RAY_AUTH_MODE=token here" if address.startswith(CLIENT_PREFIX) else ""
    return RayUnreachable(f"Ray cluster {address}: cannot connect ({first_line}){hint}")


def _last_line(error: Exception) -> str:
    """The last non-empty line of an error (the server sends its whole traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class MaskActor:
    """Holds one generator (e.g. a SAM model on its GPU) and turns batches of image rows into every output's rows.

    Each image's rows travel back pickled in one binary column, whatever the outputs' schemas.
    """

    def __init__(self, generator: str, options: tuple[tuple[str, Any], ...], max_label_map_bytes: int, outputs: list[Output]) -> None:
        self.generator = build_generator(generator, dict(options))
        self.max_label_map_bytes = max_label_map_bytes
        self.outputs = outputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        records = [
            ImageRecord(str(image_id), bytes(image["bytes"]), int(width), int(height))
            for image_id, image, width, height in zip(batch["id"], batch["image"], batch["width"], batch["height"])
        ]
        step = self.generator.batch_size
        outcomes = []
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            outcomes += generate_outcomes(self.generator, chunk, [decode_or_error(record, self.max_label_map_bytes) for record in chunk])
        rows = [pickle.dumps([output.row(record, outcome) for output in self.outputs]) for record, outcome in zip(records, outcomes)]
        return {"rows": rows, "path": [Path(str(path)).name for path in batch["path"]]}


def _actor_resources(workers: int) -> dict[str, Any]:
    """One actor per GPU (fed several rows per call) when the cluster has GPUs, else up to `workers` single-CPU actors.

    CPU actors leave one CPU free for the Parquet read tasks that feed them; taking every
    CPU would starve the reads and deadlock the pipeline.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"compute": ActorPoolStrategy(size=gpus), "num_gpus": 1, "batch_size": GPU_ROWS_PER_CALL}
    size = max(1, min(workers, int(resources.get("CPU", 1)) - 1))
    return {"compute": ActorPoolStrategy(size=size), "num_cpus": 1, "batch_size": 1}


def _labelled_rows(config: MasksConfig, shards: list[Path], outputs: list[Output]) -> Iterator[dict[str, Any]]:
    """Rows of every shard in order (`preserve_order`), each tagged with its shard's file name."""
    dataset = (
        ray.data.read_parquet([str(path) for path in shards], include_paths=True)
        .select_columns(["id", "image", "width", "height", "path"])
        .map_batches(
            MaskActor,
            fn_constructor_kwargs={
                "generator": config.generator, "options": config.options, "max_label_map_bytes": config.max_label_map_bytes,
                "outputs": outputs,
            },
            batch_format="numpy",
            **_actor_resources(config.workers),
        )
    )
    yield from dataset.iter_rows()


def _shard_rows(rows: "PeekableRows", shard: str, wanted: list[int], progress: tqdm) -> Iterator[list[Rows]]:
    """Take the rows of `shard` off the front of the stream: each image's rows of the outputs at `wanted`."""
    while rows.peek() is not None and rows.peek()["path"] == shard:
        image_rows = pickle.loads(rows.pop()["rows"])
        progress.update(1)
        yield [image_rows[index] for index in wanted]


class PeekableRows:
    """An iterator that can look one row ahead (to see where a shard ends)."""

    def __init__(self, rows: Iterator[dict[str, Any]]) -> None:
        self._rows = rows
        self._next = next(rows, None)

    def peek(self) -> dict[str, Any] | None:
        return self._next

    def pop(self) -> dict[str, Any]:
        row, self._next = self._next, next(self._rows, None)
        return row


def _label_and_write(config: MasksConfig, plan: Plan, checksums: dict[str, str], progress: tqdm) -> list[ShardReport]:
    """The driver's side of the pipeline: stream every output's rows back and write them shard by shard."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    outputs = list({output.folder: output for _, needed in plan for output in needed}.values())
    rows = PeekableRows(_labelled_rows(config, [shard for shard, _ in plan], outputs))
    reports = []
    for shard, needed in plan:
        wanted = [[output.folder for output in outputs].index(need.folder) for need in needed]
        image_rows = _shard_rows(rows, shard.name, wanted, progress)
        reports += write_outputs(needed, shard.name, image_rows, config.row_group_bytes, checksums[shard.name])
    assert rows.peek() is None, "Ray returned rows of no pending shard"
    return reports


def _on_the_cluster(config: MasksConfig, plan: Plan, checksums: dict[str, str]) -> list[ShardReport]:
    """`_label_and_write` as a task on the cluster, for Ray client drivers (Ray Data cannot run through the client)."""
    with tqdm(disable=True) as progress:
        return _label_and_write(config, plan, checksums, progress)


def run_ray(config: MasksConfig, plan: Plan, checksums: dict[str, str], progress: tqdm) -> list[ShardReport]:
    """Process the planned shards on the Ray cluster at `config.ray_address` (a local instance when empty).

    Through the Ray client (`ray://`) the driver's side runs as one task on the cluster,
    which reads IMAGES and writes OUT there: the cluster needs segpic installed and both
    folders on storage it shares (as IMAGES already must be for its read tasks); paths are made absolute.
    """
    if not plan:
        return []
    connect(config.ray_address)
    if not config.ray_address.startswith(CLIENT_PREFIX):
        return _label_and_write(config, plan, checksums, progress)
    absolute = replace(config, images=config.images.resolve())
    absolute_plan = [(shard.resolve(), [replace(output, folder=output.folder.resolve()) for output in needed]) for shard, needed in plan]
    task = ray.remote(num_cpus=0)(_on_the_cluster)
    reports = ray.get(task.remote(absolute, absolute_plan, checksums))
    progress.update(sum(report.entry.rows for report in {report.entry.name: report for report in reports}.values()))
    return reports
