"""Multi-process training: one process per device, started by `torchrun` or spawned here.

Under `torchrun` the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) is
already set; `spawn` sets the same variables for N local processes, so the training
code has a single path. gloo on CPU, nccl on GPU. Only rank 0 writes files.
"""

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.devices import resolve_device

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run (world size 1 when training alone)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model when distributed; the model itself otherwise."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Not every parameter takes part in every forward (e.g. the grid path skips none but
        # the entropy bottlenecks' quantiles only enter aux_loss), hence find_unused_parameters.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether `value` is finite on every rank: skipping a step must be a collective decision."""
        finite = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Mean of gradients over ranks, for the auxiliary loss that runs outside DDP's forward."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad.div_(self.world_size)


def in_process_group() -> bool:
    """Whether this process was started as one rank of a group (by torchrun or `spawn`)."""
    return "WORLD_SIZE" in os.environ


def start(device_choice: str) -> ProcessGroup:
    """Join the process group described by the environment (or stand alone without one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if TORCHRUN_VARIABLE in os.environ:
        die_with_parent(os.getppid())  # a torchrun agent killed with SIGKILL takes its workers along
    device = resolve_device(device_choice, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return ProcessGroup(rank, world_size, device)


def stop(group: ProcessGroup) -> None:
    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), so no orphan keeps training.

    A launcher killed with SIGKILL cannot stop its workers itself; PR_SET_PDEATHSIG makes
    the kernel send SIGKILL to each worker instead. If the parent is already gone (it died
    before the call), exit at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _spawned(rank: int, function: Callable[[T], object], argument: T, world_size: int, port: int, launcher: int) -> None:
    die_with_parent(launcher)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    function(argument)


def spawn(function: Callable[[T], object], argument: T, nproc: int) -> None:
    """Run `function(argument)` in `nproc` local processes forming one process group; they die with this one."""
    mp.spawn(_spawned, args=(function, argument, nproc, _free_port(), os.getpid()), nprocs=nproc, join=True)
