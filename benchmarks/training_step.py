"""The training step of spec §5 timed in several modes, for `bench_model.py`.

Modes: the published-cost reference, ours in fp32, ours under bf16 autocast, ours compiled.
The reference is our network made as costly as the published SegPIC code
(GityuxiLiu/SegPIC-for-Image-Compression, `compressai/models/sac.py` and `train.py`):
- DPSConv by unfold + einsum (the k²× copy of the input), as `dynamic_conv` does;
- masked average pooling by per-image int64 one-hot masks multiplied into the features, also
  building the per-pixel expansion that `mask_pool2d` computes and the caller throws away;
- prototype expansion image by image by advanced indexing, as `mask_expand` does;
- window attention with the published code's extra contiguous copies (qkv, bias, output);
- the loss also computes MS-SSIM every step, as the published `RateDistortionLoss` does
  (it is logged, not optimised, in PSNR mode);
- GDN differentiated by autograd op by op (CompressAI's layer), not our fused backward;
- Adam in its default (for-each) form, not fused;
- glibc's default allocator behaviour on a CPU: our modes keep freed memory in the heap
  (`speed.keep_freed_memory`, as `segpic train` does on a CPU), which is process-wide and
  one-way, so on a CPU each mode runs in a process of its own (`bench_model.py`).
Everything else (layers, widths, objective) is the same network.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from compressai.layers import GDN as CompressAIGDN
from pytorch_msssim import ms_ssim
from torch import Tensor

from model import gdn, plain, rat
from model.attention import (
    ShiftedWindowAttention,
    WindowMultiHeadAttention,
    merge_windows,
    partition_windows,
    shifted_window_mask,
)
from model.architectures import build_model
from model.training import speed
from model.training.objective import rate_distortion, split_parameters

LAMBDA = 0.0130


def published_masked_average_pool(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """`mask_pool2d`: per image, int64 one-hot masks times the features, plus the discarded expansion."""
    prototypes = []
    for image_features, label_map in zip(features, labels):
        with torch.no_grad():
            one_hot = F.one_hot(label_map).permute(2, 0, 1).unsqueeze(0)  # int64 (1, n, h, w)
            area = one_hot.sum(dim=(-2, -1)) + rat.MAP_EPSILON
        centres = (image_features.unsqueeze(1) * one_hot).sum(dim=(-2, -1)) / area  # (C, n)
        centres[:, label_map]  # the per-pixel expansion mask_pool2d returns and the caller drops
        prototypes.append(centres.t())
    return torch.cat(prototypes), rat.region_counts(labels)


def published_expand_prototypes(prototypes: Tensor, counts: Tensor, labels: Tensor) -> Tensor:
    """`mask_expand`: per image, index the prototype table with the label map, then stack."""
    tables = torch.split(prototypes, counts.tolist())
    return torch.stack([table[label_map, :].permute(2, 0, 1) for table, label_map in zip(tables, labels)]).contiguous()


def published_window_attention(self: WindowMultiHeadAttention, tokens: Tensor, mask: Tensor | None) -> Tensor:
    """`WindowAttention.forward` with the published code's contiguous copies of qkv and the bias."""
    windows, length, dim = tokens.shape
    qkv = self.qkv(tokens).reshape(windows, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).contiguous()
    q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(length, length, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
        per_image = mask.shape[0]
        attn = attn.view(-1, per_image, self.heads, length, length) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.heads, length, length)
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows, length, dim)
    return self.proj(out)


def published_shifted_attention(self: ShiftedWindowAttention, x: Tensor) -> Tensor:
    """`WinBasedAttention.forward`: the same windows, plus its final contiguous copy before the residual."""
    B, C, H, W = x.shape
    tokens = x.permute(0, 2, 3, 1)
    mask = None
    if self.shift > 0:
        tokens = torch.roll(tokens, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = shifted_window_mask(H, W, self.window, self.shift, x.device)
    windows = partition_windows(tokens, self.window).contiguous().view(-1, self.window * self.window, C)
    windows = self.attn(windows, mask).view(-1, self.window, self.window, C)
    tokens = merge_windows(windows, self.window, H, W)
    if self.shift > 0:
        tokens = torch.roll(tokens, shifts=(self.shift, self.shift), dims=(1, 2))
    return x + tokens.permute(0, 3, 1, 2).contiguous()


@contextlib.contextmanager
def published_cost() -> Iterator[None]:
    """Swap the published formulations into `model.rat` and the attention layers for the duration."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.multiple(
                rat,
                dps_conv=plain.dps_conv,
                masked_average_pool=published_masked_average_pool,
                expand_prototypes=published_expand_prototypes,
            )
        )
        stack.enter_context(mock.patch.object(WindowMultiHeadAttention, "forward", published_window_attention))
        stack.enter_context(mock.patch.object(ShiftedWindowAttention, "forward", published_shifted_attention))
        stack.enter_context(mock.patch.object(gdn.GDN, "forward", CompressAIGDN.forward))
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


def step_function(mode: Mode, batch: tuple[Tensor, Tensor], device: torch.device, widths: dict | None = None) -> Callable[[], float]:
    """One training step of `mode` on `batch`; `widths` (N, M) replace the published ones in smoke runs."""
    if device.type == "cpu" and not mode.published:
        speed.keep_freed_memory()
    torch.manual_seed(2)
    model = build_model("segpic", **(widths or {})).to(device, memory_format=speed.memory_format(mode.channels_last)).train()
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


def step_clock(device: torch.device) -> Callable[[], float]:
    """Wall time on a GPU; on a CPU with one torch thread, the process's CPU time.

    CPU time leaves out the time other processes hold the cores, so ratios measured on a
    shared machine stay meaningful; with several threads it would add them up, so wall time.
    """
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def measure(mode: Mode, batch: tuple[Tensor, Tensor], device: torch.device, repeats: int, widths: dict | None = None) -> Measurement:
    """Best of `repeats` timed steps after two warm-up steps (allocator, Adam state, compilation).

    Peak memory is measured around the last step: the CUDA allocator's peak on a GPU, the rise of
    the resident set on a CPU (meaningful only in a process started with a low
    MALLOC_MMAP_THRESHOLD_, see `bench_model.cpu_training_peak`).
    """
    with published_cost() if mode.published else contextlib.nullcontext():
        step = step_function(mode, batch, device, widths)
        for _ in range(2):
            step()
        times = []
        memory = PeakMemory(device)
        clock = step_clock(device)
        for _ in range(repeats):
            memory.start()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = clock()
            loss = step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(clock() - start)
        return Measurement(mode, len(batch[0]), min(times), memory.peak(), float(loss))


def print_header() -> None:
    print(f"{'mode':<34} {'batch':>5} {'s/step':>9} {'peak MiB':>9} {'speed-up':>9} {'memory':>7}", flush=True)


def print_row(m: Measurement, reference: Measurement | None) -> None:
    """One mode at one batch; ratios against the published-cost reference at the same batch."""
    speedup = f"{reference.seconds / m.seconds:8.2f}x" if reference else "-"
    memory = f"{m.peak_bytes / reference.peak_bytes:6.2f}x" if reference and reference.peak_bytes > 0 else "-"
    print(f"{m.mode.name:<34} {m.batch:>5} {m.seconds:9.4f} {m.peak_bytes / 2**20:9.1f} {speedup:>9} {memory:>7}", flush=True)
