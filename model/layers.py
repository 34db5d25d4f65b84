"""Convolutional building blocks shared by SegPIC and its WACNN baseline.

Block and parameter names follow the published state dicts
(`docs/architecture.md` §1, §4), so every `nn.Sequential` index
below is part of the checkpoint format and must not move.
"""

import torch
from compressai.layers import conv1x1, conv3x3, subpel_conv3x3
from torch import nn

from model.gdn import GDN

# The published ChARM slice transforms were sized for M = 320 latent channels.
PUBLISHED_M = 320
SLICE_HIDDEN_WIDTHS = (224, 176, 128, 64)


def conv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """`Conv2d` with 'same' padding for odd kernels (stride 2 halves the size)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """`ConvTranspose2d` that exactly doubles the size (inverse of `conv` at stride 2)."""
    return nn.ConvTranspose2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, output_padding=stride - 1
    )


def scale_bias(channels: int) -> nn.Sequential:
    """Spatially adaptive scale and bias generator of a SAL block: (B,C,h,w) -> (B,2C,h,w)."""
    return nn.Sequential(conv1x1(channels, channels), nn.GELU(), conv1x1(channels, 2 * channels))


def modulate(x: torch.Tensor, scales_bias: torch.Tensor) -> torch.Tensor:
    """`x * (1 + s) + b` with s, b the two channel halves of `scales_bias`."""
    scales, bias = scales_bias.chunk(2, dim=1)
    return x * (1 + scales) + bias


class SALDown(nn.Module):
    """SAL analysis block `basic_E.i`: stride-2 conv + GDN, then self-modulation."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv_groups = nn.Sequential(conv(in_ch, out_ch), GDN(out_ch))
        self.scales_bias = scale_bias(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_groups(x)
        return modulate(x, self.scales_bias(x))


class SALUp(nn.Module):
    """SAL synthesis block `basic_D.i`: self-modulation, then stride-2 deconv + *forward* GDN.

    The forward (not inverse) GDN is what the published model uses.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.scales_bias = scale_bias(in_ch)
        self.conv_groups = nn.Sequential(deconv(in_ch, out_ch), GDN(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_groups(modulate(x, self.scales_bias(x)))


class ResidualUnit(nn.Module):
    """Bottleneck residual unit of the WACNN attention block: `GELU(conv(x) + x)`."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv = nn.Sequential(
            conv1x1(channels, half), nn.GELU(), conv3x3(half, half), nn.GELU(), conv1x1(half, channels)
        )
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x) + x)


def interpolated_widths(start: int, end: int, steps: int) -> list[int]:
    """`steps + 1` widths going linearly from `start` to `end` (320→192 gives 320,288,256,224,192)."""
    return [round(start + (end - start) * i / steps) for i in range(steps + 1)]


def hyper_analysis(N: int, M: int) -> nn.Sequential:
    """`h_a`: y (B,M,h,w) -> z (B,N,h/4,w/4), widths stepping linearly from M down to N."""
    widths = interpolated_widths(M, N, 4)
    strides = (1, 1, 2, 1, 2)
    layers: list[nn.Module] = [conv3x3(M, widths[0])]
    for in_ch, out_ch, stride in zip(widths[:-1], widths[1:], strides[1:]):
        layers += [nn.GELU(), conv3x3(in_ch, out_ch, stride=stride)]
    return nn.Sequential(*layers)


def hyper_synthesis(N: int, M: int) -> nn.Sequential:
    """`h_mean_s` / `h_scale_s`: ẑ (B,N,h/4,w/4) -> (B,M,h,w), mirror of `hyper_analysis`."""
    w = interpolated_widths(N, M, 4)
    return nn.Sequential(
        conv3x3(w[0], w[0]),
        nn.GELU(),
        subpel_conv3x3(w[0], w[1], 2),
        nn.GELU(),
        conv3x3(w[1], w[2]),
        nn.GELU(),
        subpel_conv3x3(w[2], w[3], 2),
        nn.GELU(),
        conv3x3(w[3], w[4]),
    )


def slice_transform(in_ch: int, out_ch: int, M: int) -> nn.Sequential:
    """One ChARM transform (`cc_mean_transforms.i` etc.); hidden widths scale with M/320."""
    hidden = [max(1, round(width * M / PUBLISHED_M)) for width in SLICE_HIDDEN_WIDTHS]
    widths = [in_ch, *hidden, out_ch]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [conv(a, b, kernel_size=3, stride=1), nn.GELU()]
    return nn.Sequential(*layers[:-1])
