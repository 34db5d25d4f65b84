"""WACNN baseline (Zou, Song, Zhang, "The Devil Is in the Details: Window-based Attention
for Image Compression", CVPR 2022): SegPIC without SAL blocks, RAT or prototypes.

    x ─ g_a (conv/GDN ×2, Attn, conv/GDN, conv, Attn) ─ y ─ h_a ─ z ─► ẑ ─ h_{mean,scale}_s ─┐
    x̂ ◄─ g_s (Attn, deconv/IGDN ×2, Attn, deconv/IGDN, deconv) ◄── ŷ ◄── ChARM slices ◄──────┘

Same hyperprior and channel-wise autoregressive entropy model as SegPIC, so the two
differ only in the transforms. `mask` and `grid` are accepted and ignored, so training
and evaluation code drive both through one protocol.
"""

import torch
from torch import nn

from model.attention import AttentionBlock
from model.entropy_coding import ChannelAutoregressiveCodec, bit_estimate, dtype_of, symbol_checksums
from model.gdn import GDN
from model.layers import conv, deconv


class WACNN(ChannelAutoregressiveCodec):
    """Window-attention CNN codec; N % 8 == 0 and M % 40 == 0 (8 heads, 10 slices)."""

    def __init__(self, N: int = 192, M: int = 320):
        if N % 8 or M % 40:
            raise ValueError(f"WACNN needs N % 8 == 0 and M % 40 == 0, got N={N}, M={M}")
        super().__init__(N, M)
        self.g_a = nn.Sequential(
            conv(3, N),
            GDN(N),
            conv(N, N),
            GDN(N),
            AttentionBlock(N, window=8, shift=4),
            conv(N, N),
            GDN(N),
            conv(N, M),
            AttentionBlock(M, window=4, shift=2),
        )
        self.g_s = nn.Sequential(
            AttentionBlock(M, window=4, shift=2),
            deconv(M, N),
            GDN(N, inverse=True),
            deconv(N, N),
            GDN(N, inverse=True),
            AttentionBlock(N, window=8, shift=4),
            deconv(N, N),
            GDN(N, inverse=True),
            deconv(N, 3),
        )

    def _hyper_synthesis(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, grid: int = 4) -> dict:
        """x (B,3,H,W) in [0,1], H and W multiples of 64; `mask` and `grid` are ignored."""
        self.check_input_size(x)
        y = self.g_a(x)
        z_hat, z_likelihoods = bit_estimate(self.h_a(y), self.entropy_bottleneck)
        y_hat, y_likelihoods = self.slices_forward(y, *self._hyper_synthesis(z_hat))
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    @torch.inference_mode()
    def compress(self, x: torch.Tensor, grid: int = 4, portable: bool = False) -> dict:
        """Streams [[y], [z]] (one entry per image), z's spatial shape, one CRC32 of the coded
        symbols per image; `portable` as in `SegPIC.compress`."""
        self.check_input_size(x)
        coder = self.entropy_coder(portable)
        y = self.g_a(x)
        z_strings, z_hat, z_symbols = coder.code_hyperlatent(self.h_a(y))
        means, scales = map(coder._coded, coder._hyper_synthesis(z_hat))
        y_strings, y_symbols = coder.slices_compress(y.to(means.dtype), means, scales)
        return {
            "strings": [y_strings, z_strings],
            "shape": z_hat.shape[-2:],
            "symbol_checksums": symbol_checksums(y_symbols, z_symbols),
        }

    @torch.inference_mode()
    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, int], grid: int = 4, portable: bool = False
    ) -> dict:
        """x̂ (B,3,64·h_z,64·w_z), unclamped, and the CRC32 of each image's decoded symbols."""
        coder = self.entropy_coder(portable)
        y_strings, z_strings = strings
        z_hat, z_symbols = coder.decode_hyperlatent(z_strings, shape)
        means, scales = map(coder._coded, coder._hyper_synthesis(z_hat))
        y_hat, y_symbols = coder.slices_decompress(y_strings, means, scales)
        return {
            "x_hat": self.g_s(y_hat.to(dtype_of(self.g_s))),
            "symbol_checksums": symbol_checksums(y_symbols, z_symbols),
        }
