"""Fast-path options of a training step: bf16 autocast with float32 islands, channels_last,
fused Adam and torch.compile. Each is an option; with all off the step is the plain fp32 one.

Under bf16 autocast the modules whose precision sets the rate stay in float32: the entropy
bottlenecks (their cumulative logits go through matmuls autocast would run in bf16), the
Gaussian conditional (likelihoods of y) and GDN/IGDN (a normalisation by a sum of squares).
"""

import contextlib
import functools
from collections.abc import Iterable

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from torch import Tensor, nn

FLOAT32_MODULES = (EntropyBottleneck, GaussianConditional, GDN)


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


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when asked (CPU included, so the path is tested everywhere)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


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
