"""Plain reference implementations of SegPIC's formulas, written the way the published code does.

They are slow on purpose: the fast kernels in `model.rat` are tested for equality against
these (values and gradients) and `benchmarks/bench_model.py` measures speed-ups against them.
Nothing in the codec itself calls this module.
"""

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import GaussianConditional
from torch import Tensor

from model.entropy_coding import ChannelAutoregressiveCodec, RansTables
from model.rat import MAP_EPSILON


def dps_conv(u: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    """DPSConv as unfold + einsum: builds the k²× copy of u that the fast kernel avoids."""
    batch, channels, height, width = u.shape
    columns = F.unfold(u, kernel_size, padding=kernel_size // 2)
    columns = columns.view(batch, channels, kernel_size * kernel_size, height, width)
    return torch.einsum("bcjhw,bcjhw->bchw", columns, kernels)


def _one_hot_masks(label_map: Tensor, regions: int, dtype: torch.dtype) -> Tensor:
    """(n, 1, h, w) binary masks, one per region id 0..n-1."""
    return F.one_hot(label_map, regions).permute(2, 0, 1).unsqueeze(1).to(dtype)


def masked_average_pool(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """MAP as the published code writes it: per image, Σ f·mask / (Σ mask + 0.0005) over one-hot masks."""
    prototypes, counts = [], []
    for image_features, label_map in zip(features, labels):
        regions = int(label_map.max()) + 1
        masks = _one_hot_masks(label_map, regions, features.dtype)
        sums = (image_features.unsqueeze(0) * masks).sum(dim=(2, 3))
        prototypes.append(sums / (masks.sum(dim=(2, 3)) + MAP_EPSILON))
        counts.append(regions)
    return torch.cat(prototypes), torch.tensor(counts, dtype=torch.int64)


def expand_prototypes(prototypes: Tensor, counts: Tensor, labels: Tensor) -> Tensor:
    """Prototype expansion as Σ_r mask_r · P_r over one-hot masks, one image at a time."""
    images = []
    for table, label_map in zip(torch.split(prototypes, counts.tolist()), labels):
        masks = _one_hot_masks(label_map, table.shape[0], prototypes.dtype)
        images.append((masks * table[:, :, None, None]).sum(dim=0))
    return torch.stack(images)


def build_indexes(conditional: GaussianConditional, scales: Tensor) -> Tensor:
    """CDF indexes by CompressAI's loop: one pass over the scales per scale-table entry."""
    return conditional.build_indexes(scales)


def rans_tables(codec: ChannelAutoregressiveCodec) -> RansTables:
    """The padded CDF lists rebuilt from tensors on every call, as the published compress/decompress do."""
    return RansTables.from_conditional(codec.gaussian_conditional, trimmed=False)


def encode_symbols(symbols: Tensor, indexes: Tensor, tables: RansTables) -> bytes:
    """The published encoder: Python lists of every symbol and index, built from torch tensors."""
    symbols_list = symbols.reshape(-1).tolist()
    indexes_list = indexes.reshape(-1).tolist()
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols_list, indexes_list, tables.cdfs, tables.cdf_lengths, tables.offsets)
    return encoder.flush()


def decode_symbols(decoder: RansDecoder, indexes: Tensor, tables: RansTables) -> Tensor:
    """The published decoder: a Python list back through `torch.Tensor(list)`."""
    values = decoder.decode_stream(indexes.reshape(-1).tolist(), tables.cdfs, tables.cdf_lengths, tables.offsets)
    return torch.Tensor(values).reshape(indexes.shape).int()
