"""Small seeded random codecs for tests, with a latent loud enough to code, and a photo to code with them.

An untrained analysis transform produces a y that rounds to zeros, so its streams would carry
a single symbol; scaling the last convolution of the final attention block makes them varied.
"""

import math

import torch
from PIL import Image

from model.bitstream import image_to_tensor
from model.segpic import SegPIC
from model.wacnn import WACNN
from pipeline.sample import sample_photo_paths

LATENT_GAIN = 30


def photo(width: int = 150, height: int = 100) -> torch.Tensor:
    """The top left of a sample photograph (rocket.jpg) as the codecs' input, (1, 3, height, width) in [0, 1]."""
    with Image.open(sample_photo_paths()[3]) as image:
        return image_to_tensor(image.convert("RGB").crop((0, 0, width, height)))


def amplify_latent(attention_block: torch.nn.Module) -> None:
    """Scale the last convolution of the analysis transform's final attention block in place."""
    with torch.no_grad():
        for parameter in attention_block.conv_a[2].conv[4].parameters():
            parameter.mul_(LATENT_GAIN)


def random_segpic(seed: int, N: int = 24, M: int = 40) -> SegPIC:
    """Seeded random SegPIC (train mode, coder tables not built) with an amplified latent."""
    torch.manual_seed(seed)
    model = SegPIC(N=N, M=M)
    amplify_latent(model.g_a2[2])
    return model


def random_wacnn(seed: int, N: int = 32, M: int = 40) -> WACNN:
    """Seeded random WACNN baseline with an amplified latent."""
    torch.manual_seed(seed)
    model = WACNN(N=N, M=M)
    amplify_latent(model.g_a[8])
    return model


SPREAD_GAIN = 100
SPREAD_SCALE_RANGE = (0.3, 150.0)


def spread_scales(model: SegPIC | WACNN) -> SegPIC | WACNN:
    """Make the ChARM scales cover most of the scale table (untrained ones all sit at its floor):
    log-spaced biases per channel plus an amplified, data-dependent term."""
    low, high = (math.log10(bound) for bound in SPREAD_SCALE_RANGE)
    with torch.no_grad():
        for transform in model.cc_scale_transforms:
            last = transform[-1]
            last.weight.mul_(SPREAD_GAIN)
            last.bias.copy_(torch.logspace(low, high, last.bias.numel()))
    return model


def scales_on_table_boundaries(model: SegPIC | WACNN) -> SegPIC | WACNN:
    """Worst case for float32 coding: every ChARM scale equals an entry of the published scale
    table exactly (constant per channel, all entries in turn), so any rounding difference flips
    a CDF index. Call after `update()`."""
    table = model.gaussian_conditional.scale_table
    with torch.no_grad():
        for index, transform in enumerate(model.cc_scale_transforms):
            last = transform[-1]
            last.weight.zero_()
            channels = torch.arange(last.bias.numel()) + index * last.bias.numel()
            last.bias.copy_(table[channels % (table.numel() - 1)])
    return model
