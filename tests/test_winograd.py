"""Winograd F(4×4, 3×3) convolutions of the float64 twin: the direct convolution's results to
float64 precision, and portable files that decode symbol-exactly whichever way the twin
convolves (a GPU twin convolves directly)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import portable
from model.bitstream import CodecIdentity, decode_file, encode_image
from model.layers import hyper_synthesis, slice_transform
from model.rat import RAT
from model.winograd import (
    MIN_WINOGRAD_PIXELS,
    WinogradConv3x3,
    transformed_kernels,
    winograd_conv3x3,
    with_winograd_convolutions,
)

from random_codecs import photo, random_segpic, spread_scales

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FLOAT64_TOLERANCE = 1e-13


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("shape", [(2, 7, 9, 11), (2, 3, 8, 12), (1, 16, 16, 20), (3, 5, 1, 4), (1, 4, 2, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("channels_last_input", [True, False])
def test_winograd_equals_the_direct_convolution_in_float64(shape, with_bias, channels_last_input):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, shape[1], 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64) if with_bias else None
    if channels_last_input:
        x = x.contiguous(memory_format=torch.channels_last)
    result = winograd_conv3x3(x, transformed_kernels(weight), bias)
    expected = F.conv2d(x, weight, bias, padding=1)
    assert result.shape == expected.shape
    assert relative_error(result, expected) < FLOAT64_TOLERANCE
    assert result.is_contiguous()
    # Float32 rounding is a million times coarser: the comparison can tell.
    rounded = F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), padding=1).double()
    assert relative_error(rounded, expected) > 1e3 * relative_error(result, expected)


def test_small_inputs_take_the_direct_convolution_unchanged():
    conv = nn.Conv2d(8, 8, 3, padding=1).double()
    winograd = WinogradConv3x3(conv)
    small, large = torch.randn(1, 8, 15, 16, dtype=torch.float64), torch.randn(1, 8, 16, 16, dtype=torch.float64)
    assert small.shape[-2] * small.shape[-1] < MIN_WINOGRAD_PIXELS <= large.shape[-2] * large.shape[-1]
    with torch.no_grad():
        assert torch.equal(winograd(small), conv(small))
        assert not torch.equal(winograd(large), conv(large))
        assert relative_error(winograd(large), conv(large)) < FLOAT64_TOLERANCE


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 5, padding=2),
        nn.Conv2d(4, 4, 3, padding=0),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    ],
    ids=["stride", "groups", "5x5", "no-padding", "reflect"],
)
def test_other_convolutions_are_left_alone_and_refused(conv):
    assert with_winograd_convolutions(nn.Sequential(conv))[0] is conv
    with pytest.raises(ValueError, match="not a plain 3x3"):
        WinogradConv3x3(conv)


@pytest.mark.parametrize(
    "build, inputs",
    [
        (lambda: slice_transform(60, 20, 40), lambda: (torch.randn(2, 60, 16, 18, dtype=torch.float64),)),
        (lambda: hyper_synthesis(24, 40), lambda: (torch.randn(1, 24, 5, 6, dtype=torch.float64),)),
        (
            lambda: RAT(16, 16),
            lambda: (torch.randn(1, 16, 20, 16, dtype=torch.float64), torch.randn(1, 16, 4, 4, dtype=torch.float64)),
        ),
    ],
    ids=["slice transform", "hyper synthesis", "RAT"],
)
def test_converted_modules_compute_what_the_originals_do(build, inputs):
    torch.manual_seed(0)
    original = build().double().eval()
    converted = with_winograd_convolutions(copy.deepcopy(original))
    assert any(isinstance(module, WinogradConv3x3) for module in converted.modules())
    arguments = inputs()
    with torch.no_grad():
        assert relative_error(converted(*arguments), original(*arguments)) < FLOAT64_TOLERANCE


def winograd_convolutions(module: nn.Module) -> int:
    return sum(isinstance(child, WinogradConv3x3) for child in module.modules())


def test_portable_files_are_the_same_with_winograd_or_direct_float64_convolutions(monkeypatch):
    """On a CPU the twin convolves by Winograd, on a GPU directly: files and symbols must agree."""
    model = spread_scales(random_segpic(0)).eval()
    model.update(force=True)
    identity = CodecIdentity.of(model)
    x = photo(256, 256)  # y is 16×16: the slice transforms take the Winograd path
    assert (x.shape[-2] // 16) * (x.shape[-1] // 16) >= MIN_WINOGRAD_PIXELS
    winograd_file = encode_image(model, x, identity, portable=True)
    assert winograd_convolutions(model.entropy_coder(portable=True)) > 0
    with monkeypatch.context() as patch:
        patch.setattr(portable, "with_winograd_convolutions", lambda module: module)
        model.__dict__.pop("_portable_cache")
        direct_file = encode_image(model, x, identity, portable=True)
        assert winograd_convolutions(model.entropy_coder(portable=True)) == 0
        direct_picture = decode_file(model, winograd_file, identity)  # raises on any symbol mismatch
    model.__dict__.pop("_portable_cache")
    assert direct_file == winograd_file
    assert torch.allclose(decode_file(model, direct_file, identity), direct_picture, atol=1e-4)
