"""Hyperprior + channel-wise autoregressive (ChARM) entropy model shared by WACNN and SegPIC.

The ten y slices of one image go into one rANS stream, slice after slice, each slice
flattened (C,h,w) row-major: the stream the published code writes. Unlike the published
code, symbols and CDF indexes of all slices are gathered as int32 arrays and handed to
the coder in one call, and the Gaussian CDF tables are converted to lists once per
`update()`, each cut to its length, instead of padded on every call (the decoder calls
the coder once per slice, and the bindings convert the tables each time).
`encode_symbols`, `decode_symbols` and `build_indexes` are module-level so a benchmark
can swap in plain versions.

`compress`/`decompress` take `portable=True` to run the entropy model on the float64 twin
of `model.portable` instead of the model itself, and report a CRC32 of each image's coded
symbols (`symbol_checksums`) so a decoder that reproduces different symbols can say so.
"""

import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.base import get_scale_table
from compressai.ops import quantize_ste
from torch import nn

from model.layers import hyper_analysis, hyper_synthesis, slice_transform
from model.portable import native_output, portable_twin

NUM_SLICES = 10
MAX_SUPPORT_SLICES = 5
LATENT_DOWNSAMPLING = 64
CDF_BUFFERS = {
    EntropyBottleneck: ("_quantized_cdf", "_offset", "_cdf_length"),
    GaussianConditional: ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"),
}


def symbol_checksums(*symbols: torch.Tensor) -> list[int]:
    """CRC32 per image of the int32 symbols of every stream (each tensor (B, ...)), in order."""
    checksums = []
    for image in range(symbols[0].shape[0]):
        crc = 0
        for tensor in symbols:
            crc = zlib.crc32(tensor[image].to(device="cpu", dtype=torch.int32).contiguous().numpy().tobytes(), crc)
        checksums.append(crc)
    return checksums


def bottleneck_symbols(bottleneck: EntropyBottleneck, decoded: torch.Tensor) -> torch.Tensor:
    """The symbols an EntropyBottleneck coded, recovered from its dequantised output."""
    return torch.round(decoded - bottleneck._get_medians()).int()


def dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def coder_table_buffers(module: nn.Module) -> tuple[str, ...]:
    """Names of the buffers `update()` fills (sized by the data, saved empty before it)."""
    return next((names for kind, names in CDF_BUFFERS.items() if isinstance(module, kind)), ())


@dataclass(frozen=True)
class RansTables:
    """The Gaussian conditional's CDF tables as the lists the rANS coder takes."""

    cdfs: list[list[int]]
    cdf_lengths: list[int]
    offsets: list[int]

    @classmethod
    def from_conditional(cls, conditional: GaussianConditional, trimmed: bool = True) -> "RansTables":
        """`trimmed`: each CDF cut to its length, the only entries the coder reads (the padded
        rows hold 7x more integers, which the coder's bindings convert on every call)."""
        if conditional.quantized_cdf.numel() == 0:
            raise ValueError("the Gaussian conditional has no CDF tables: call update() first")
        cdf_lengths = conditional.cdf_length.reshape(-1).int().tolist()
        cdfs = conditional.quantized_cdf.tolist()
        if trimmed:
            cdfs = [cdf[:length] for cdf, length in zip(cdfs, cdf_lengths)]
        return cls(cdfs, cdf_lengths, conditional.offset.reshape(-1).int().tolist())


def build_indexes(conditional: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """CDF index of every scale, equal to `GaussianConditional.build_indexes` in one search.

    Index = number of scale-table entries (the last one excluded) strictly below the scale.
    """
    scales = conditional.lower_bound_scale(scales)
    table = conditional.scale_table[:-1].contiguous()
    return torch.searchsorted(table, scales.contiguous()).int()


def encode_symbols(symbols: torch.Tensor, indexes: torch.Tensor, tables: RansTables) -> bytes:
    """One rANS stream for all `symbols` (int32, any shape) in row-major order."""
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(
        symbols.cpu().numpy().ravel().tolist(),
        indexes.cpu().numpy().ravel().tolist(),
        tables.cdfs,
        tables.cdf_lengths,
        tables.offsets,
    )
    return encoder.flush()


def decode_symbols(decoder: RansDecoder, indexes: torch.Tensor, tables: RansTables) -> torch.Tensor:
    """Next `indexes.numel()` symbols of the decoder's stream, as int32 shaped like `indexes`
    (on the CPU: the coder runs there whatever the model's device)."""
    values = decoder.decode_stream(
        indexes.cpu().numpy().ravel().tolist(), tables.cdfs, tables.cdf_lengths, tables.offsets
    )
    return torch.from_numpy(np.fromiter(values, dtype=np.int32, count=len(values))).view(indexes.shape)


def bit_estimate(x: torch.Tensor, bottleneck: EntropyBottleneck) -> tuple[torch.Tensor, torch.Tensor]:
    """(round_ste(x - medians) + medians, likelihoods): the rate from `bottleneck(x)`, the
    value from straight-through rounding, exactly what `bottleneck.compress` then
    `decompress` reproduce at test time."""
    _, likelihoods = bottleneck(x)
    medians = bottleneck._get_medians()
    return quantize_ste(x - medians) + medians, likelihoods


class ChannelAutoregressiveCodec(CompressionModel):
    """Hyperprior (`h_a`, `h_mean_s`, `h_scale_s`, `entropy_bottleneck`) and ChARM slices.

    Subclasses build the analysis and synthesis transforms, decide what reaches the
    slice coder as `means` and `scales` (B,M,h,w), and name their streams in
    `stream_names`, in the order `compress` returns them.
    """

    stream_names: tuple[str, ...] = ("y", "z")
    # What decides symbols and tables; portable mode swaps these for float64 copies.
    entropy_module_names: tuple[str, ...] = (
        "h_mean_s", "h_scale_s", "cc_mean_transforms", "cc_scale_transforms", "lrp_transforms",
        "entropy_bottleneck", "gaussian_conditional",
    )
    # Slice transform lists whose entries beyond MAX_SUPPORT_SLICES decide no symbol.
    support_module_names: tuple[str, ...] = ("cc_mean_transforms", "lrp_transforms")
    is_portable = False

    def __init__(self, N: int, M: int):
        super().__init__()
        if M % NUM_SLICES:
            raise ValueError(f"M={M} must be a multiple of {NUM_SLICES} (the number of y slices)")
        self.N, self.M = N, M
        slice_ch = M // NUM_SLICES
        self.h_a = hyper_analysis(N, M)
        self.h_mean_s = hyper_synthesis(N, M)
        self.h_scale_s = hyper_synthesis(N, M)
        self.cc_mean_transforms = self._slice_transforms(slice_ch, extra_inputs=0)
        self.cc_scale_transforms = self._slice_transforms(slice_ch, extra_inputs=0)
        self.lrp_transforms = self._slice_transforms(slice_ch, extra_inputs=1)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        self._rans_cache: tuple[tuple[Any, ...], RansTables] | None = None

    @staticmethod
    def check_input_size(x: torch.Tensor) -> None:
        """The transforms downsample by 64 and attend in whole windows: sides must be multiples of 64."""
        height, width = x.shape[-2:]
        if height % LATENT_DOWNSAMPLING or width % LATENT_DOWNSAMPLING:
            raise ValueError(f"input {height}x{width} is not a multiple of {LATENT_DOWNSAMPLING}: pad it first")

    def _slice_transforms(self, slice_ch: int, extra_inputs: int) -> nn.ModuleList:
        """Transform i sees M hyper channels plus min(i, 5) support slices and `extra_inputs` more."""
        return nn.ModuleList(
            slice_transform(self.M + slice_ch * (min(i, MAX_SUPPORT_SLICES) + extra_inputs), slice_ch, self.M)
            for i in range(NUM_SLICES)
        )

    def update(self, scale_table: torch.Tensor | None = None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the coder tables; Gaussian scales exp(linspace(log .11, log 256, 64)) by default."""
        if scale_table is None:
            scale_table = get_scale_table()
        return super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Resize the coder-table buffers to the incoming ones, then load.

        CompressAI's version matches modules by bare string prefix, so `entropy_bottleneck`
        also claims `entropy_bottleneck_b.*` and crashes; here names match exactly.
        """
        for name, module in self.named_modules():
            for buffer_name in coder_table_buffers(module):
                incoming = state_dict.get(f"{name}.{buffer_name}")
                if incoming is not None:
                    setattr(module, buffer_name, getattr(module, buffer_name).new_empty(incoming.shape))
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)

    def entropy_coder(self, portable: bool) -> "ChannelAutoregressiveCodec":
        """The model itself, or (portable) its float64 twin from `model.portable`."""
        return portable_twin(self, MAX_SUPPORT_SLICES) if portable else self

    def stream_symbol_counts(self, shape: tuple[int, int], grid: int) -> tuple[int, ...]:
        """Symbols in each stream of one image whose z has spatial `shape` (y is 4× z's size)."""
        height, width = shape
        return (self.M * 16 * height * width, self.N * height * width)

    def _coded(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`, through the test hook when computed at native precision."""
        return tensor if self.is_portable else native_output(tensor)

    def code_hyperlatent(self, z: torch.Tensor) -> tuple[list[bytes], torch.Tensor, torch.Tensor]:
        """(z streams, ẑ as the decoder will see it, z symbols)."""
        bottleneck = self.entropy_bottleneck
        strings = bottleneck.compress(z.to(dtype_of(bottleneck)))
        z_hat = bottleneck.decompress(strings, z.shape[-2:])
        return strings, z_hat, bottleneck_symbols(bottleneck, z_hat)

    def decode_hyperlatent(self, strings: list[bytes], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        z_hat = self.entropy_bottleneck.decompress(strings, tuple(shape))
        return z_hat, bottleneck_symbols(self.entropy_bottleneck, z_hat)

    def rans_tables(self) -> RansTables:
        """The Gaussian CDF lists, converted once per change of the conditional's tables."""
        conditional = self.gaussian_conditional
        tensors = (conditional._quantized_cdf, conditional._offset, conditional._cdf_length)
        key = tuple((tensor, tensor._version) for tensor in tensors)
        cached = self._rans_cache
        if cached is None or any(a is not b or va != vb for (a, va), (b, vb) in zip(cached[0], key)):
            self._rans_cache = (key, RansTables.from_conditional(conditional))
        return self._rans_cache[1]

    def _slice_parameters(
        self, index: int, means: torch.Tensor, scales: torch.Tensor, decoded: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean_support, μ, σ) of slice `index` from the first decoded slices."""
        support = decoded[:MAX_SUPPORT_SLICES]
        mean_support = torch.cat([means, *support], dim=1)
        mu = self.cc_mean_transforms[index](mean_support)
        sigma = self.cc_scale_transforms[index](torch.cat([scales, *support], dim=1))
        return mean_support, mu, sigma

    def _refine(self, index: int, mean_support: torch.Tensor, y_hat_slice: torch.Tensor) -> torch.Tensor:
        """Latent residual prediction: ŷ_i + 0.5·tanh(lrp_i(mean_support, ŷ_i))."""
        lrp = self.lrp_transforms[index](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    def slices_forward(
        self, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training/eval pass over the slices: (ŷ, likelihoods), both (B,M,h,w)."""
        decoded: list[torch.Tensor] = []
        likelihoods = []
        for index, y_slice in enumerate(y.chunk(NUM_SLICES, dim=1)):
            mean_support, mu, sigma = self._slice_parameters(index, means, scales, decoded)
            _, slice_likelihoods = self.gaussian_conditional(y_slice, sigma, mu)
            likelihoods.append(slice_likelihoods)
            decoded.append(self._refine(index, mean_support, quantize_ste(y_slice - mu) + mu))
        return torch.cat(decoded, dim=1), torch.cat(likelihoods, dim=1)

    def _coding_parameters(
        self, index: int, means: torch.Tensor, scales: torch.Tensor, decoded: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean_support, mu, sigma = self._slice_parameters(index, means, scales, decoded)
        return mean_support, self._coded(mu), self._coded(sigma)

    def slices_compress(
        self, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor
    ) -> tuple[list[bytes], torch.Tensor]:
        """One y stream per image of the batch, and the coded symbols (B,M,h,w) int32.

        Only the first MAX_SUPPORT_SLICES ŷ slices condition later ones, so the encoder
        (which needs no reconstruction) skips the LRP of the rest.
        """
        decoded: list[torch.Tensor] = []
        symbols, indexes = [], []
        for index, y_slice in enumerate(y.chunk(NUM_SLICES, dim=1)):
            mean_support, mu, sigma = self._coding_parameters(index, means, scales, decoded)
            slice_symbols = self.gaussian_conditional.quantize(y_slice, "symbols", mu)
            symbols.append(slice_symbols)
            indexes.append(build_indexes(self.gaussian_conditional, sigma))
            if index < MAX_SUPPORT_SLICES:
                decoded.append(self._coded(self._refine(index, mean_support, slice_symbols + mu)))
        all_symbols, all_indexes = torch.cat(symbols, dim=1), torch.cat(indexes, dim=1)
        tables = self.rans_tables()
        return [encode_symbols(all_symbols[b], all_indexes[b], tables) for b in range(y.shape[0])], all_symbols

    def slices_decompress(
        self, strings: list[bytes], means: torch.Tensor, scales: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ŷ (B,M,h,w) from one y stream per image, slice by slice as the encoder coded them,
        and the decoded symbols (B,M,h,w) int32."""
        tables = self.rans_tables()
        decoders = []
        for string in strings:
            decoder = RansDecoder()
            decoder.set_stream(string)
            decoders.append(decoder)
        decoded: list[torch.Tensor] = []
        symbols = []
        for index in range(NUM_SLICES):
            mean_support, mu, sigma = self._coding_parameters(index, means, scales, decoded)
            slice_indexes = build_indexes(self.gaussian_conditional, sigma)
            slice_symbols = torch.stack(
                [decode_symbols(decoder, slice_indexes[b], tables) for b, decoder in enumerate(decoders)]
            )
            symbols.append(slice_symbols)
            decoded.append(self._coded(self._refine(index, mean_support, slice_symbols.to(mu.device) + mu)))
        return torch.cat(decoded, dim=1), torch.cat(symbols, dim=1)
