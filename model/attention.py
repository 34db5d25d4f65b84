"""The WACNN window-attention block (Zou et al., CVPR 2022), as SegPIC uses it.

    x ──┬── conv_a: RU, RU, RU ─────────────────────────────┐
        │                                                    × ──(+ x)──► out
        └── conv_b: WinAttn, RU, RU, RU, conv1x1 ── sigmoid ─┘

`WinAttn` is a Swin block without norm or MLP. Its weights live in a submodule `attn`
(`conv_b.0.attn.qkv`, `.proj`, `.relative_position_bias_table` and the saved int64 buffer
`.relative_position_index`), as in the published checkpoints.
"""

import torch
from compressai.layers import conv1x1
from torch import nn

from model.layers import ResidualUnit

SHIFTED_PAIR_MASK = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """Standard Swin index (w², w²) into the ((2w-1)², heads) bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, w², w²) additive mask: -100 between pixels that the roll brought from different regions."""
    regions = torch.zeros(height, width, device=device)
    label = 0
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for rows in bands:
        for cols in bands:
            regions[rows, cols] = label
            label += 1
    windows = partition_windows(regions[None, :, :, None], window).flatten(1)
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * SHIFTED_PAIR_MASK


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B,H,W,C) -> (B·nW, w, w, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C)


def merge_windows(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `partition_windows`: (B·nW, w, w, C) -> (B,H,W,C)."""
    C = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, C)


class WindowMultiHeadAttention(nn.Module):
    """Multi-head self-attention inside each window with a learned relative-position bias."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """tokens (B·nW, w², C); mask (nW, w², w²) or None."""
        windows, length, dim = tokens.shape
        qkv = self.qkv(tokens).view(windows, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(length, length, -1).permute(2, 0, 1)[None]
        if mask is not None:
            per_image = mask.shape[0]
            attn = attn.view(-1, per_image, self.heads, length, length) + mask[None, :, None]
            attn = attn.view(-1, self.heads, length, length)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(windows, length, dim))


class ShiftedWindowAttention(nn.Module):
    """Swin attention layer without norm or MLP, on (B,C,H,W) maps; H, W multiples of `window`."""

    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.window = window
        self.shift = shift
        self.attn = WindowMultiHeadAttention(dim, heads, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if H % self.window or W % self.window:
            raise ValueError(f"feature map {H}x{W} is not a multiple of the attention window {self.window}")
        tokens = x.permute(0, 2, 3, 1)
        mask = None
        if self.shift > 0:
            tokens = torch.roll(tokens, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(H, W, self.window, self.shift, x.device)
        windows = partition_windows(tokens, self.window).reshape(-1, self.window * self.window, C)
        windows = self.attn(windows, mask).view(-1, self.window, self.window, C)
        tokens = merge_windows(windows, self.window, H, W)
        if self.shift > 0:
            tokens = torch.roll(tokens, shifts=(self.shift, self.shift), dims=(1, 2))
        return tokens.permute(0, 3, 1, 2) + x


class AttentionBlock(nn.Module):
    """WACNN attention block: `conv_a(x) * sigmoid(conv_b(x)) + x`."""

    def __init__(self, dim: int, window: int, shift: int, heads: int = 8):
        super().__init__()
        self.conv_a = nn.Sequential(ResidualUnit(dim), ResidualUnit(dim), ResidualUnit(dim))
        self.conv_b = nn.Sequential(
            ShiftedWindowAttention(dim, heads, window, shift),
            ResidualUnit(dim),
            ResidualUnit(dim),
            ResidualUnit(dim),
            conv1x1(dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_a(x) * torch.sigmoid(self.conv_b(x)) + x
