"""3×3 convolutions as Winograd F(4×4, 3×3), for the float64 entropy model on a CPU.

Torch computes a float64 convolution on the CPU as an unfold (a copy of nine times the
input) and one matrix product, about twice the time of the product alone. Winograd's
transform turns each 4×4 output tile into 36 elementwise products of 6×6 transformed
tiles: 4× fewer multiplications and a 2.25× copy instead of a 9× one. Both tile
transforms run as one matrix product each (with the Kronecker product of the 1-D
transforms), which streams through memory once instead of once per addition. Float64
results stay within ~1e-14 of the direct convolution's (float32 is ~1e-7 away), so
machines still agree to the precision portable mode relies on (see `model.portable`).
Used in portable mode's twin only, where float64 then costs about what float32 does.
"""

import functools

import torch
from torch import nn

# Lavin & Gray's F(4×4, 3×3): kernel transform G (6×3), input transform Bᵀ (6×6), output
# transform Aᵀ (4×6). A tile's output is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A.
KERNEL_TRANSFORM = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
INPUT_TRANSFORM = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
OUTPUT_TRANSFORM = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
TILE, INPUT_TILE = 4, 6
# Aᵀ's column 1 is all ones: a bias added to each tile's product (1, 1) reaches all 16 outputs.
BIAS_PRODUCT = 1 * INPUT_TILE + 1
# Below this many output pixels, the direct convolution is faster than the transforms.
MIN_WINOGRAD_PIXELS = 256


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
    """G·g·Gᵀ of every (out, in) kernel, as 36 matrices (36, out, in) for one batched product."""
    g = torch.tensor(KERNEL_TRANSFORM, dtype=weight.dtype, device=weight.device)
    kernels = torch.einsum("ai,ocij,bj->aboc", g, weight, g)
    return kernels.reshape(INPUT_TILE**2, *weight.shape[:2]).contiguous()


@functools.cache
def _tile_transforms(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bᵀ⊗Bᵀ (36, 36) and Aᵀ⊗Aᵀ (16, 36): both 2-D transforms of a flattened tile at once."""
    input_transform = torch.tensor(INPUT_TRANSFORM, dtype=dtype, device=device)
    output_transform = torch.tensor(OUTPUT_TRANSFORM, dtype=dtype, device=device)
    return torch.kron(input_transform, input_transform), torch.kron(output_transform, output_transform)


def winograd_conv3x3(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The 3×3, stride-1, zero-padded convolution of x (B,C,H,W) with `transformed_kernels`:
    (B,O,H,W), contiguous.

    Tiles are laid out channel-major (36, C, tiles), so the batched product has the tiles as
    its long side: it stays efficient when an image has few tiles (a 16×24 map has 24).
    """
    batch, channels, height, width = x.shape
    tile_rows, tile_cols = -(-height // TILE), -(-width // TILE)
    padded = x.new_zeros(channels, batch, TILE * tile_rows + 2, TILE * tile_cols + 2)
    padded[:, :, 1 : height + 1, 1 : width + 1].copy_(x.transpose(0, 1))
    # Every 6×6 input tile (stride 4) as one column of a (36, C·tiles) matrix: a 2.25× copy.
    channel_stride, image_stride, row_stride, _ = padded.stride()
    tiles = padded.as_strided(
        (INPUT_TILE, INPUT_TILE, channels, batch, tile_rows, tile_cols),
        (row_stride, 1, channel_stride, image_stride, TILE * row_stride, TILE),
    ).reshape(INPUT_TILE**2, -1)
    input_transform, output_transform = _tile_transforms(x.dtype, x.device)
    transformed = torch.mm(input_transform, tiles).view(INPUT_TILE**2, channels, -1)
    products = torch.bmm(kernels, transformed)
    if bias is not None:
        products[BIAS_PRODUCT] += bias[:, None]
    out_channels = kernels.shape[1]
    outputs = torch.mm(output_transform, products.view(INPUT_TILE**2, -1))
    # One copy puts each tile's 4×4 outputs in place.
    image = (
        outputs.view(TILE, TILE, out_channels, batch, tile_rows, tile_cols)
        .permute(3, 2, 4, 0, 5, 1)
        .reshape(batch, out_channels, TILE * tile_rows, TILE * tile_cols)
    )
    if image.shape[-2:] == (height, width):
        return image
    return image[..., :height, :width].contiguous()


class WinogradConv3x3(nn.Module):
    """A plain 3×3 `Conv2d` computed by Winograd F(4×4, 3×3) on inputs large enough to gain."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_winograd_convertible(conv):
            raise ValueError(f"not a plain 3x3 stride-1 convolution: {conv}")
        self.conv = conv
        self.register_buffer("kernels", transformed_kernels(conv.weight.detach()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] < MIN_WINOGRAD_PIXELS:
            return self.conv(x)
        return winograd_conv3x3(x, self.kernels, self.conv.bias)


def with_winograd_convolutions(module: nn.Module) -> nn.Module:
    """`module` with every plain 3×3 convolution in it (itself included) made Winograd, in place."""
    if is_winograd_convertible(module):
        return WinogradConv3x3(module)
    for name, child in list(module.named_children()):
        if is_winograd_convertible(child):
            setattr(module, name, WinogradConv3x3(child))
        else:
            with_winograd_convolutions(child)
    return module
