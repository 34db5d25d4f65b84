"""Portable entropy coding: the entropy model recomputed in float64 so every machine codes alike.

A learned codec's rANS symbols and CDF indexes come out of floating-point networks. GPUs (TF32
convolutions), CPU instruction sets and thread counts round float32 differently, and one scale
index that flips across a table boundary desynchronises the whole stream. Portable mode runs
everything that decides symbols and tables in float64, starting from the integer symbols
decoded so far: the hyperprior syntheses (with SegPIC's 1/16-scale prototype synthesis and
RATs), the ChARM slice transforms, the scale indexes, and the coder tables themselves (Gaussian
tables from `scipy.special.erfc`, bottleneck tables from float64 copies of the bottlenecks).
Machines then differ by at most a few 1e-14 relative (a CPU's Winograd twin against a direct
convolution, measured on kodim01's scales), and a scale would have to fall that close to one
of 63 table boundaries 12% apart to flip an index: under 1e-12 per symbol.

The float64 copies live in a "twin" of the model: a shallow copy whose entropy modules are
replaced by float64 copies on the model's device, so the model's own coding methods run on
it unchanged. The heavy analysis and synthesis transforms stay in the model's precision, and
so do the mean and LRP transforms of the slices no later slice is conditioned on: their
outputs only place the decoded values (ŷ = symbol + μ), they never decide a symbol or index.
On a CPU the twin's 3×3 convolutions run as Winograd F(4×4, 3×3) (`model.winograd`): torch's
float64 convolution there is an unfold plus a matrix product, about three times float32's time,
and float64 Winograd agrees with it (and a GPU's direct convolution) to ~1e-14 all the same.
"""

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import numpy as np
import scipy.special
import scipy.stats
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from model.winograd import with_winograd_convolutions

PORTABLE_DTYPE = torch.float64
SCALE_TABLE_BOUNDS = (0.11, 256.0)
SCALE_TABLE_LEVELS = 64


def portable_scale_table() -> torch.Tensor:
    """exp(linspace(log .11, log 256, 64)) in float64, the published table's values."""
    low, high = (math.log(bound) for bound in SCALE_TABLE_BOUNDS)
    step = (high - low) / (SCALE_TABLE_LEVELS - 1)
    return torch.tensor([math.exp(low + i * step) for i in range(SCALE_TABLE_LEVELS)], dtype=PORTABLE_DTYPE)


def portable_gaussian_conditional(device: torch.device) -> GaussianConditional:
    """A GaussianConditional whose table and CDFs are computed in float64 outside torch's kernels."""
    conditional = GaussianConditional(None)
    table = portable_scale_table().numpy()
    multiplier = -scipy.stats.norm.ppf(conditional.tail_mass / 2)
    centers = np.ceil(table * multiplier).astype(np.int64)
    lengths = 2 * centers + 1
    samples = np.abs(np.arange(lengths.max())[None, :] - centers[:, None]).astype(np.float64)
    cumulative = lambda values: 0.5 * scipy.special.erfc(-(2**-0.5) * values)  # noqa: E731
    upper = cumulative((0.5 - samples) / table[:, None])
    lower = cumulative((-0.5 - samples) / table[:, None])
    pmf, tail_mass = torch.from_numpy(upper - lower), torch.from_numpy(2 * lower[:, :1])
    lengths_tensor = torch.from_numpy(lengths).int()
    conditional._quantized_cdf = conditional._pmf_to_cdf(pmf, tail_mass, lengths_tensor, int(lengths.max()))
    conditional._offset = -torch.from_numpy(centers).int()
    conditional._cdf_length = lengths_tensor + 2
    conditional.scale_table = torch.from_numpy(table)
    return conditional.to(device)


_native_parameter_hook: Callable[[torch.Tensor], torch.Tensor] | None = None


@contextlib.contextmanager
def perturbed_native_parameters(hook: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Test hook: pass every entropy parameter computed in the model's own precision (hyper
    means/scales, slice μ/σ, refined slices; in portable mode only the μ and LRP outputs of
    slices nothing is conditioned on) through `hook`, as a machine with other rounding would
    compute them."""
    global _native_parameter_hook
    previous, _native_parameter_hook = _native_parameter_hook, hook
    try:
        yield
    finally:
        _native_parameter_hook = previous


def native_output(tensor: torch.Tensor) -> torch.Tensor:
    """A native-precision entropy parameter, through the test hook when one is set."""
    hook = _native_parameter_hook
    return tensor if hook is None else hook(tensor)


class NativePrecision(nn.Module):
    """A model module run in its own precision from float64 inputs, inside the twin."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return native_output(self.module(x.to(next(self.module.parameters()).dtype)))


def _twin_module(model: nn.Module, name: str, device: torch.device, deciding_slices: int) -> nn.Module:
    module = getattr(model, name)
    if isinstance(module, GaussianConditional):
        return portable_gaussian_conditional(device)
    if name in model.support_module_names:
        return nn.ModuleList(
            _float64_copy(slice_module, device) if index < deciding_slices else NativePrecision(slice_module)
            for index, slice_module in enumerate(module)
        )
    return _float64_copy(module, device)


def _float64_copy(module: nn.Module, device: torch.device) -> nn.Module:
    twin = copy.deepcopy(module).to(device=device, dtype=PORTABLE_DTYPE).requires_grad_(False)
    if isinstance(twin, EntropyBottleneck):
        twin.update(force=True)
    return with_winograd_convolutions(twin) if device.type == "cpu" else twin


def _version_key(model: nn.Module, names: tuple[str, ...], device: torch.device) -> tuple:
    """Changes whenever a weight of the copied modules is replaced or modified in place."""
    tensors = [tensor for name in names for tensor in getattr(model, name).state_dict(keep_vars=True).values()]
    return (str(device), tuple((id(tensor), tensor._version) for tensor in tensors))


def portable_twin(model: nn.Module, deciding_slices: int) -> nn.Module:
    """The model with its `entropy_module_names` replaced by float64 copies (cached per weights);
    of the `support_module_names` lists only the first `deciding_slices` entries."""
    names = model.entropy_module_names
    device = next(model.parameters()).device
    key = _version_key(model, names, device)
    cached = model.__dict__.get("_portable_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.inference_mode(False), torch.no_grad():
        twin = copy.copy(model)
        twin._modules = dict(model._modules)
        twin.__dict__.pop("_portable_cache", None)
        twin._rans_cache = None
        for name in names:
            twin._modules[name] = _twin_module(model, name, device, deciding_slices)
        twin.is_portable = True
    model.__dict__["_portable_cache"] = (key, twin)
    return twin
