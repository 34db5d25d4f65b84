"""`segpic masks --devices cuda:0,cuda:1`: one worker process per device, each masking whole shards.

Every worker builds the generator once on its device (processes are spawned, as CUDA
requires) and takes the next pending shard when it finishes one, so the shards, reports
and manifest are the ones a single process writes (the device is not part of the
settings hash).
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from pipeline.generators import MaskGenerator
from pipeline.local_engine import run_local
from pipeline.mask_labelling import MasksConfig
from pipeline.shard_outputs import Output, Plan, ShardReport

_worker_generator: MaskGenerator | None = None


def _start_worker(config: MasksConfig, devices: "multiprocessing.Queue[str]", torch_threads: int | None) -> None:
    """Process initializer: claim one device and build the generator on it.

    The worker computes with the parent's torch thread count when the parent has set one: CPU
    reductions split by thread count, and masks of a sensitive network then differ from a
    single process's.
    """
    global _worker_generator
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    _worker_generator = config.build_generator(device=devices.get())


def _mask_shard(config: MasksConfig, shard: Path, outputs: list[Output], checksums: dict[str, str]) -> list[ShardReport]:
    assert _worker_generator is not None, "worker started without a generator"
    with tqdm(disable=True) as quiet:
        return run_local(config, _worker_generator, [(shard, outputs)], checksums, quiet)


def run_on_devices(config: MasksConfig, plan: Plan, checksums: dict[str, str], progress: tqdm) -> list[ShardReport]:
    """Process the planned shards with one process per entry of `config.devices`; reports in shard order."""
    context = multiprocessing.get_context("spawn")
    reports: dict[Path, list[ShardReport]] = {}
    with context.Manager() as manager:
        devices = manager.Queue()
        for device in config.devices:
            devices.put(device)
        workers = min(len(config.devices), len(plan))
        torch = sys.modules.get("torch")  # not imported: the parent runs with torch's default, as a worker does
        threads = torch.get_num_threads() if torch is not None else None
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(config, devices, threads)) as pool:
            futures = {pool.submit(_mask_shard, config, shard, outputs, checksums): shard for shard, outputs in plan}
            for future in as_completed(futures):
                reports[futures[future]] = future.result()
                progress.update(reports[futures[future]][0].entry.rows)
    return [report for shard, _ in plan for report in reports[shard]]
