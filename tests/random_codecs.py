"""Small seeded random codecs for tests, with a latent loud enough to code.

An untrained analysis transform produces a y that rounds to zeros, so its streams would carry
a single symbol; scaling the last convolution of the final attention block makes them varied.
"""

import torch

from model.segpic import SegPIC
from model.wacnn import WACNN

LATENT_GAIN = 30


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
