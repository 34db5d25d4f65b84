"""Fast-path options of a training step: bf16 autocast with float32 islands, channels_last,
fused Adam and torch.compile. Each is an option; with all off the step is the plain fp32 one.

On a CPU the trainer also keeps freed memory in the process heap (`keep_freed_memory`).

Under bf16 autocast the modules whose precision sets the rate stay in float32: the entropy
bottlenecks (their cumulative logits go through matmuls autocast would run in bf16), the
Gaussian conditional (likelihoods of y) and GDN/IGDN (a normalisation by a sum of squares).
"""

import contextlib
import ctypes
import functools
import os
import platform
from collections.abc import Iterable

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from torch import Tensor, nn

FLOAT32_MODULES = (EntropyBottleneck, GaussianConditional, GDN)

# glibc's mallopt parameters (malloc.h) and the values that keep a training step's blocks in the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_LIMITS = (1 << 30, 32 << 20)  # 1 GiB where glibc accepts it, else its documented maximum
NEVER_TRIM = (1 << 31) - 1
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _in_float32(forward, device_type: str):
    @functools.wraps(forward)
    def float32_forward(*args, **kwargs):
        inputs = [a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
        with torch.autocast(device_type, enabled=False):
            return forward(*inputs, **kwargs)

    return float32_forward


def keep_float32_islands(model: nn.Module, device_type: str) -> int:
    """Make every entropy model and GDN of `model` run in float32 even inside autocast; returns their count."""
    islands = [module for module in model.modules() if isinstance(module, FLOAT32_MODULES)]
    for module in islands:
        module.forward = _in_float32(module.forward, device_type)
    return len(islands)


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks in the heap, so each step reuses the pages the last one touched.

    By default glibc serves every block above its mmap threshold (at most 32 MiB) with a
    fresh mapping and unmaps it on free, so on a CPU the activations that a training step
    frees and the next step allocates again are page-faulted in afresh every step (measured
    here: 0.15-0.35 s of kernel time in a 4.4 s step of the published-size model at 256²,
    batch 2, besides the cold caches).
    Serving them from the heap and never trimming it does what the caching allocator does
    on a GPU; the resident set then stays at the step's peak. Process-wide and one-way.
    Returns False where the C library is not glibc, glibc refuses the setting, or the user
    set glibc's MALLOC_* tuning variables themselves (then nothing is changed).
    """
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    if not any(mallopt(M_MMAP_THRESHOLD, limit) for limit in HEAP_BLOCK_LIMITS):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when asked (CPU included, so the path is tested everywhere).

    Without autocast's cache of bf16 weight copies: torch clears that cache only when the
    outermost autocast context exits, so one left entered elsewhere in the process (SAM 3's
    tracking predictor enters one for good when it is built) would freeze the weights the
    network sees at their first bf16 copies and the run would stop learning. Each weight
    is used once per step here, so the cache saved nothing.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one launch per step instead of several per parameter group)."""
    return torch.optim.Adam(list(parameters), lr=lr, fused=True)


def compiled(network: nn.Module, enabled: bool, backend: str = "inductor") -> nn.Module:
    """`torch.compile(network)` when enabled; the first steps then pay the compilation.

    `backend="aot_eager"` captures the same forward and backward graphs without generating
    kernels: the CPU tests use it, inductor's code generation for this network takes many
    minutes on a small CPU.
    """
    return torch.compile(network, backend=backend) if enabled else network
