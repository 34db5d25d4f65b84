"""SegPIC (Liu et al., ECCV 2024): WACNN with region-adaptive transforms steered by prototypes.

Spec: `docs/architecture.md` §3-§4. Data flow (P̂ = transmitted prototypes):

    x ─ g_a1 ─┬─ RAT(P̂1) ─ g_a2 ─┬─ RAT(P̂2) ─ h_a ─ z ──► ẑ ─ h_{mean,scale}_s ─ RAT(P̂2) ─┐
              └─ MAP/grid ─► P̂1  └─ MAP/grid ─► P̂2                                       │
    x̂ ◄─ g_s1 ─ RAT(P̂1) ─ g_s0 ◄─────────────────── ŷ ◄── ChARM slices (μ0, σ0) ◄─────────┘

In training a segmentation mask (privileged information) defines the regions; at test
time, and in `compress`/`decompress`, a g×g grid does. Prototypes are coded with their
own bottlenecks (`entropy_bottleneck_b` at 1/4 scale, `entropy_bottleneck_b2` at 1/16).
"""

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import conv1x1
from torch import nn

from model import rat
from model.attention import AttentionBlock
from model.entropy_coding import (
    ChannelAutoregressiveCodec,
    bit_estimate,
    bottleneck_symbols,
    dtype_of,
    symbol_checksums,
)
from model.gdn import GDN
from model.layers import SALDown, SALUp

SYNTHESIS_OUT_CHANNELS = 32


def prototype_transform(widths: tuple[int, ...], inverse: bool) -> nn.Sequential:
    """`g_ab*` (GDN) or `g_sb*` (IGDN): 1×1 convs with (I)GDN between, on (n, C, g, g) maps."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [conv1x1(a, b), GDN(b, inverse=inverse)]
    return nn.Sequential(*layers[:-1])


def downsample_label_map(label_map: torch.Tensor) -> torch.Tensor:
    """(B,H,W) int64 -> (B,H/4,W/4) by nearest sampling, no relabelling (spec §3)."""
    scaled = F.interpolate(label_map[:, None].float(), scale_factor=1 / 4, mode="nearest")
    return scaled[:, 0].long()


class SegPIC(ChannelAutoregressiveCodec):
    """SegPIC codec; N, M default to the published widths (N % 24 == 0, M % 40 == 0)."""

    stream_names = ("y", "z", "prototypes_quarter", "prototypes_sixteenth")
    # The 1/16-scale prototypes feed the hyper path; the 1/4-scale ones only the synthesis,
    # but their bottleneck's tables decide that stream's symbols.
    entropy_module_names = ChannelAutoregressiveCodec.entropy_module_names + (
        "entropy_bottleneck_b", "entropy_bottleneck_b2", "g_sb2", "dyn_dec_hyper_means", "dyn_dec_hyper_scales",
    )

    def __init__(self, N: int = 192, M: int = 320):
        if N % 24 or M % 40:
            raise ValueError(f"SegPIC needs N % 24 == 0 and M % 40 == 0, got N={N}, M={M}")
        super().__init__(N, M)
        self.basic_E = nn.ModuleList([SALDown(3, N), SALDown(N, N), SALDown(N, N), SALDown(N, M)])
        self.basic_D = nn.ModuleList([SALUp(M, N), SALUp(N, N), SALUp(N, N), SALUp(N, SYNTHESIS_OUT_CHANNELS)])
        self.g_a1 = nn.Sequential(self.basic_E[0], self.basic_E[1], AttentionBlock(N, window=8, shift=4))
        self.g_a2 = nn.Sequential(self.basic_E[2], self.basic_E[3], AttentionBlock(M, window=4, shift=2))
        self.g_s0 = nn.Sequential(AttentionBlock(M, window=4, shift=2), self.basic_D[0], self.basic_D[1])
        self.g_s1 = nn.Sequential(
            AttentionBlock(N, window=8, shift=4),
            self.basic_D[2],
            self.basic_D[3],
            conv1x1(SYNTHESIS_OUT_CHANNELS, 3),
        )
        half, two_thirds = N // 2, 2 * N // 3
        self.g_ab = prototype_transform((N, two_thirds, half, half), inverse=False)
        self.g_sb = prototype_transform((half, two_thirds, N, N), inverse=True)
        self.g_ab2 = prototype_transform((M, N, two_thirds, half), inverse=False)
        self.g_sb2 = prototype_transform((half, two_thirds, N, M), inverse=True)
        self.entropy_bottleneck_b = EntropyBottleneck(half)
        self.entropy_bottleneck_b2 = EntropyBottleneck(half)
        self.dyn_encoder = rat.RAT(N, N)
        self.dyn_decoder = rat.RAT(N, N)
        self.dyn_enc_hyper = rat.RAT(M, M)
        self.dyn_dec_hyper_means = rat.RAT(M, M)
        self.dyn_dec_hyper_scales = rat.RAT(M, M)

    def _prototype_stages(self) -> tuple[tuple[nn.Module, EntropyBottleneck, nn.Module], ...]:
        """(analysis, bottleneck, synthesis) at 1/4 scale, then at 1/16 scale."""
        return (
            (self.g_ab, self.entropy_bottleneck_b, self.g_sb),
            (self.g_ab2, self.entropy_bottleneck_b2, self.g_sb2),
        )

    def _transmit_prototypes(
        self, stage: int, features: torch.Tensor, label_map: torch.Tensor | None, grid: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool prototypes (per region, or per grid cell), pass them through their codec.

        Returns (P̂, likelihoods): P̂ is (Σ n_b, C) with a label map, else (B, C, g, g).
        """
        analysis, bottleneck, synthesis = self._prototype_stages()[stage]
        if label_map is None:
            pooled = F.adaptive_avg_pool2d(features, (grid, grid))
        else:
            prototypes, _ = rat.masked_average_pool(features, label_map)
            pooled = prototypes[:, :, None, None]
        coded, likelihoods = bit_estimate(analysis(pooled), bottleneck)
        decoded = synthesis(coded)
        return (decoded if label_map is None else decoded.flatten(1)), likelihoods

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, grid: int = 4) -> dict:
        """x (B,3,H,W) in [0,1], H and W multiples of 64; mask (B,H,W) int64 region ids or None."""
        self.check_input_size(x)
        m4 = downsample_label_map(mask) if mask is not None else None
        m16 = downsample_label_map(m4) if m4 is not None else None
        y1 = self.g_a1(x)
        prototypes1, center_likelihoods = self._transmit_prototypes(0, y1, m4, grid)
        y = self.g_a2(self.dyn_encoder(y1, prototypes1, m4))
        prototypes2, center2_likelihoods = self._transmit_prototypes(1, y, m16, grid)
        z = self.h_a(self.dyn_enc_hyper(y, prototypes2, m16))
        z_hat, z_likelihoods = bit_estimate(z, self.entropy_bottleneck)
        means, scales = self._hyper_synthesis(z_hat, prototypes2, m16)
        y_hat, y_likelihoods = self.slices_forward(y, means, scales)
        x_hat = self._synthesis(y_hat, prototypes1, m4)
        return {
            "x_hat": x_hat,
            "likelihoods": {
                "y": y_likelihoods,
                "z": z_likelihoods,
                "z_center": center_likelihoods,
                "z_center2": center2_likelihoods,
            },
        }

    def _hyper_synthesis(
        self, z_hat: torch.Tensor, prototypes2: torch.Tensor, m16: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ0, σ0) for the slice coder, both (B,M,h,w)."""
        means = self.dyn_dec_hyper_means(self.h_mean_s(z_hat), prototypes2, m16)
        scales = self.dyn_dec_hyper_scales(self.h_scale_s(z_hat), prototypes2, m16)
        return means, scales

    def _synthesis(self, y_hat: torch.Tensor, prototypes1: torch.Tensor, m4: torch.Tensor | None) -> torch.Tensor:
        return self.g_s1(self.dyn_decoder(self.g_s0(y_hat), prototypes1, m4))

    def stream_symbol_counts(self, shape: tuple[int, int], grid: int) -> tuple[int, ...]:
        prototype_symbols = (self.N // 2) * grid * grid
        return (*super().stream_symbol_counts(shape, grid), prototype_symbols, prototype_symbols)

    def _code_prototype_grid(
        self, stage: int, features: torch.Tensor, grid: int
    ) -> tuple[list[bytes], torch.Tensor, torch.Tensor]:
        """Code the g×g prototype grid and decode it again, as the decoder will see it:
        (streams, P̂, symbols)."""
        analysis, bottleneck, _ = self._prototype_stages()[stage]
        pooled = analysis(F.adaptive_avg_pool2d(features, (grid, grid)))
        strings = bottleneck.compress(pooled.to(dtype_of(bottleneck)))
        return (strings, *self._decode_prototype_grid(stage, strings, grid))

    def _decode_prototype_grid(self, stage: int, strings: list[bytes], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, bottleneck, synthesis = self._prototype_stages()[stage]
        decoded = bottleneck.decompress(strings, (grid, grid))
        return synthesis(decoded.to(dtype_of(synthesis))), bottleneck_symbols(bottleneck, decoded)

    @torch.inference_mode()
    def compress(self, x: torch.Tensor, grid: int = 4, portable: bool = False) -> dict:
        """Streams [[y], [z], [c1], [c2]] (one entry per image), z's spatial shape and one
        CRC32 of the coded symbols per image. `portable`: entropy model in float64
        (`model.portable`); the default writes the published code's streams."""
        self.check_input_size(x)
        coder = self.entropy_coder(portable)
        y1 = self.g_a1(x)
        center_strings, prototypes1, center_symbols = coder._code_prototype_grid(0, y1, grid)
        y = self.g_a2(self.dyn_encoder(y1, prototypes1))
        center2_strings, prototypes2, center2_symbols = coder._code_prototype_grid(1, y, grid)
        z = self.h_a(self.dyn_enc_hyper(y, prototypes2.to(x.dtype)))
        z_strings, z_hat, z_symbols = coder.code_hyperlatent(z)
        means, scales = map(coder._coded, coder._hyper_synthesis(z_hat, prototypes2, None))
        y_strings, y_symbols = coder.slices_compress(y.to(means.dtype), means, scales)
        return {
            "strings": [y_strings, z_strings, center_strings, center2_strings],
            "shape": z.shape[-2:],
            "symbol_checksums": symbol_checksums(y_symbols, z_symbols, center_symbols, center2_symbols),
        }

    @torch.inference_mode()
    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, int], grid: int = 4, portable: bool = False
    ) -> dict:
        """x̂ (B,3,64·h_z,64·w_z), unclamped, from the four stream lists of `compress` (coded
        in the same mode), and the CRC32 of each image's decoded symbols."""
        coder = self.entropy_coder(portable)
        y_strings, z_strings, center_strings, center2_strings = strings
        prototypes1, center_symbols = coder._decode_prototype_grid(0, center_strings, grid)
        prototypes2, center2_symbols = coder._decode_prototype_grid(1, center2_strings, grid)
        z_hat, z_symbols = coder.decode_hyperlatent(z_strings, shape)
        means, scales = map(coder._coded, coder._hyper_synthesis(z_hat, prototypes2, None))
        y_hat, y_symbols = coder.slices_decompress(y_strings, means, scales)
        return {
            "x_hat": self._synthesis(y_hat.to(prototypes1.dtype), prototypes1, None),
            "symbol_checksums": symbol_checksums(y_symbols, z_symbols, center_symbols, center2_symbols),
        }
