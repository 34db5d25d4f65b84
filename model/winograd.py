"""3×3 convolutions as Winograd F(2×2, 3×3), for the float64 entropy model on a CPU.

Torch computes a float64 convolution on the CPU as an unfold (a copy of nine times the
input) and one matrix product, about twice the time of the product alone. Winograd's
transform turns each 2×2 output tile into 16 elementwise products of 4×4 transformed
tiles, so the product work falls 2.25× and no nine-fold copy is made. The transforms'
coefficients are 0, ±1 and ±½, so float64 results stay within a few 1e-16 of the direct
convolution's: machines still agree to the precision portable mode relies on (see
`model.portable`). Used in portable mode's twin only, where it halves the float64 time.
"""

import torch
import torch.nn.functional as F
from torch import nn

# Kernel transform G (4×3) of F(2×2, 3×3); the input (Bᵀ) and output (Aᵀ) transforms are
# written out as additions in `_input_tiles` and `_output_tiles`.
KERNEL_TRANSFORM = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# Below this many output pixels, the direct convolution is faster than the transforms.
MIN_WINOGRAD_PIXELS = 256
ELEMENTWISE_ACTIVATIONS = (nn.GELU, nn.LeakyReLU)


def is_winograd_convertible(module: nn.Module) -> bool:
    """A plain 3×3 convolution: stride 1, padding 1, no dilation or groups, zero padding."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.padding == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def transformed_kernels(weight: torch.Tensor) -> torch.Tensor:
    """G·g·Gᵀ of every (out, in) kernel, as 16 matrices (16, in, out) for one batched product."""
    g = torch.tensor(KERNEL_TRANSFORM, dtype=weight.dtype, device=weight.device)
    kernels = torch.einsum("ai,ocij,bj->abco", g, weight, g)
    return kernels.reshape(16, weight.shape[1], weight.shape[0]).contiguous()


def _input_transform(
    d0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor, out: tuple = (None,) * 4
) -> tuple[torch.Tensor, ...]:
    """Bᵀ applied to four tile rows (or columns), written into `out` where given."""
    return (
        torch.sub(d0, d2, out=out[0]),
        torch.add(d1, d2, out=out[1]),
        torch.sub(d2, d1, out=out[2]),
        torch.sub(d1, d3, out=out[3]),
    )


def _output_transform(
    m0: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, m3: torch.Tensor, out: tuple = (None,) * 2
) -> tuple[torch.Tensor, ...]:
    """Aᵀ applied to four rows (or columns) of products, written into `out` where given."""
    return torch.add(m0 + m1, m2, out=out[0]), torch.sub(m1 - m2, m3, out=out[1])


def _input_tiles(padded: torch.Tensor, tile_rows: int, tile_cols: int) -> torch.Tensor:
    """Bᵀ·d·B of every 4×4 tile (stride 2) of `padded` (B, H, W, C): (16, B·tiles, C)."""
    batch, _, _, channels = padded.shape
    tiles = padded.new_empty(4, 4, batch, tile_rows, tile_cols, channels)
    rows = _input_transform(*(padded[:, a : a + 2 * tile_rows : 2] for a in range(4)))
    for row, row_tiles in zip(rows, tiles):
        _input_transform(*(row[:, :, b : b + 2 * tile_cols : 2] for b in range(4)), out=tuple(row_tiles))
    return tiles.view(16, -1, channels)


def _output_tiles(products: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Aᵀ·m·A of every tile's 4×4 products (4, 4, B, tiles_h, tiles_w, O): (B, 2·tiles_h, 2·tiles_w, O)."""
    batch, tile_rows, tile_cols, out_channels = shape
    image = products.new_empty(batch, tile_rows, 2, tile_cols, 2, out_channels)
    for i, row in enumerate(_output_transform(*products)):
        _output_transform(*row, out=(image[:, :, i, :, 0], image[:, :, i, :, 1]))
    return image.view(batch, 2 * tile_rows, 2 * tile_cols, out_channels)


def winograd_conv3x3(
    x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, channels_last: bool
) -> torch.Tensor:
    """The 3×3, stride-1, zero-padded convolution of x (B,C,H,W) with `transformed_kernels`,
    (B,O,H,W) in channels-last memory (which the next such convolution reads without a copy)
    or contiguous (which other layers, grouped convolutions above all, read faster)."""
    batch, channels, height, width = x.shape
    tile_rows, tile_cols = (height + 1) // 2, (width + 1) // 2
    padding = (1, 1 + 2 * tile_cols - width, 1, 1 + 2 * tile_rows - height)
    padded = F.pad(x, padding).permute(0, 2, 3, 1).contiguous()
    products = torch.bmm(_input_tiles(padded, tile_rows, tile_cols), kernels)
    out_channels = kernels.shape[-1]
    products = products.view(4, 4, batch, tile_rows, tile_cols, out_channels)
    image = _output_tiles(products, (batch, tile_rows, tile_cols, out_channels))
    if image.shape[1:3] != (height, width):  # odd sides: drop the padding tiles' extra row/column
        image = image[:, :height, :width].contiguous()
    if bias is not None:
        image += bias
    image = image.permute(0, 3, 1, 2)
    return image if channels_last else image.contiguous()


class WinogradConv3x3(nn.Module):
    """A plain 3×3 `Conv2d` computed by Winograd F(2×2, 3×3) on inputs large enough to gain."""

    def __init__(self, conv: nn.Conv2d, channels_last_output: bool = False):
        super().__init__()
        if not is_winograd_convertible(conv):
            raise ValueError(f"not a plain 3x3 stride-1 convolution: {conv}")
        self.conv = conv
        self.channels_last_output = channels_last_output
        self.register_buffer("kernels", transformed_kernels(conv.weight.detach()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] < MIN_WINOGRAD_PIXELS:
            return self.conv(x)
        return winograd_conv3x3(x, self.kernels, self.conv.bias, self.channels_last_output)


def _feeds_another(module: nn.Module, index: int) -> bool:
    """Whether child `index` of an `nn.Sequential` feeds a convertible convolution through one activation."""
    return (
        isinstance(module, nn.Sequential)
        and index + 2 < len(module)
        and isinstance(module[index + 1], ELEMENTWISE_ACTIVATIONS)
        and is_winograd_convertible(module[index + 2])
    )


def with_winograd_convolutions(module: nn.Module) -> nn.Module:
    """`module` with every plain 3×3 convolution in it (itself included) made Winograd, in place.

    In an `nn.Sequential`, a convolution whose output reaches another one through a single
    activation hands it channels-last memory.
    """
    if is_winograd_convertible(module):
        return WinogradConv3x3(module)
    for index, (name, child) in enumerate(list(module.named_children())):
        if is_winograd_convertible(child):
            setattr(module, name, WinogradConv3x3(child, _feeds_another(module, index)))
        else:
            with_winograd_convolutions(child)
    return module
