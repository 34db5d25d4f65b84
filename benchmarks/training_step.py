"""The training step of spec §5 timed in several modes, for `bench_model.py`.

Modes: the published-cost reference, ours in fp32, ours under bf16 autocast, ours compiled.
The reference is our network made as costly as the published SegPIC code
(GityuxiLiu/SegPIC-for-Image-Compression, `compressai/models/sac.py` and `train.py`):
- DPSConv by unfold + einsum (the k²× copy of the input), as `dynamic_conv` does;
- masked average pooling by per-image one-hot masks, also building the per-pixel expansion
  that `mask_pool2d` computes and the caller throws away;
- prototype expansion image by image by advanced indexing, as `mask_expand` does;
- the loss also computes MS-SSIM every step, as the published `RateDistortionLoss` does
  (it is logged, not optimised, in PSNR mode);
- Adam in its default (for-each) form, not fused.
Everything else (layers, widths, objective) is the same network.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

from model import plain, rat
from model.architectures import build_model
from model.training import speed
from model.training.objective import rate_distortion, split_parameters

LAMBDA = 0.0130


def published_masked_average_pool(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """`mask_pool2d`: one-hot pooling per image plus the discarded per-pixel expansion."""
    prototypes, counts = plain.masked_average_pool(features, labels)
    for table, label_map in zip(torch.split(prototypes, counts.tolist()), labels):
        table.t()[:, label_map]  # built and dropped, exactly as the published function does
    return prototypes, counts


def published_expand_prototypes(prototypes: Tensor, counts: Tensor, labels: Tensor) -> Tensor:
    """`mask_expand`: per image, index the prototype table with the label map, then stack."""
    images = [table[label_map, :].permute(2, 0, 1) for table, label_map in zip(torch.split(prototypes, counts.tolist()), labels)]
    return torch.stack(images).contiguous()


@contextlib.contextmanager
def published_cost() -> Iterator[None]:
    """Swap the published formulations into `model.rat` for the duration."""
    with mock.patch.multiple(
        rat,
        dps_conv=plain.dps_conv,
        masked_average_pool=published_masked_average_pool,
        expand_prototypes=published_expand_prototypes,
    ):
        yield


@dataclass(frozen=True)
class Mode:
    name: str
    published: bool = False
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False


MODES = (
    Mode("published-cost reference, fp32", published=True),
    Mode("ours fp32"),
    Mode("ours bf16 autocast", bf16=True),
    Mode("ours compiled, bf16", bf16=True, compile=True),
)


@dataclass(frozen=True)
class Measurement:
    mode: Mode
    batch: int
    seconds: float
    peak_bytes: int
    loss: float


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak memory of a block above what was in use before it: CUDA allocator peak, or resident-set peak on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self._base = _status_kib("VmRSS") * 1024

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        return _status_kib("VmHWM") * 1024 - self._base


def _step_function(mode: Mode, batch: tuple[Tensor, Tensor], device: torch.device) -> Callable[[], float]:
    torch.manual_seed(2)
    model = build_model("segpic").to(device, memory_format=speed.memory_format(mode.channels_last)).train()
    if mode.bf16:
        speed.keep_float32_islands(model, device.type)
    main_parameters, aux_parameters = split_parameters(model)
    if mode.published:
        optimizer = torch.optim.Adam(main_parameters, lr=1e-4)
        aux_optimizer = torch.optim.Adam(aux_parameters, lr=1e-3)
    else:
        optimizer, aux_optimizer = speed.adam(main_parameters, 1e-4), speed.adam(aux_parameters, 1e-3)
    network = speed.compiled(model, mode.compile)
    images, label_maps = (tensor.to(device) for tensor in batch)
    images = images.contiguous(memory_format=speed.memory_format(mode.channels_last))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        with speed.autocast(device, mode.bf16):
            output = network(images, mask=label_maps)
        terms = rate_distortion(output, images, LAMBDA)
        if mode.published:
            ms_ssim(images, output["x_hat"], data_range=1.0)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
        return terms.loss.detach()

    return step


def measure(mode: Mode, batch: tuple[Tensor, Tensor], device: torch.device, repeats: int) -> Measurement:
    """Best of `repeats` timed steps after two warm-up steps (allocator, Adam state, compilation)."""
    with published_cost() if mode.published else contextlib.nullcontext():
        step = _step_function(mode, batch, device)
        for _ in range(2):
            step()
        memory = PeakMemory(device)
        memory.start()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss = step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return Measurement(mode, len(batch[0]), min(times), memory.peak(), float(loss))


def print_header() -> None:
    print(f"{'mode':<34} {'batch':>5} {'s/step':>9} {'peak MiB':>9} {'speed-up':>9} {'memory':>7}", flush=True)


def print_row(m: Measurement, reference: Measurement | None) -> None:
    """One mode at one batch; ratios against the published-cost reference at the same batch."""
    speedup = f"{reference.seconds / m.seconds:8.2f}x" if reference else "-"
    memory = f"{m.peak_bytes / reference.peak_bytes:6.2f}x" if reference and reference.peak_bytes > 0 else "-"
    print(f"{m.mode.name:<34} {m.batch:>5} {m.seconds:9.4f} {m.peak_bytes / 2**20:9.1f} {speedup:>9} {memory:>7}", flush=True)
