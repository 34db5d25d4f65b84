"""Distortion metrics, computed as CompressAI's eval_model does: on 8-bit pixel values.

Both images are scaled to [0, 255] and rounded first, so the numbers describe the
pictures a user would see and are comparable with published tables.
"""

import math

import torch
from pytorch_msssim import ms_ssim

MAX_VALUE = 255.0
# pytorch_msssim's five-scale MS-SSIM with an 11-tap window needs sides above (11 - 1) * 2**4.
MS_SSIM_MIN_SIDE = 161


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0,1] floats -> rounded [0,255] floats (the 8-bit picture)."""
    return (x.detach().float().cpu() * MAX_VALUE).clamp(0, MAX_VALUE).round()


def psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """PSNR in dB of the 8-bit pictures; infinite for identical ones."""
    mse = (to_pixels(original) - to_pixels(reconstruction)).pow(2).mean().item()
    return math.inf if mse == 0 else 20 * math.log10(MAX_VALUE) - 10 * math.log10(mse)


def ms_ssim_value(original: torch.Tensor, reconstruction: torch.Tensor) -> float | None:
    """MS-SSIM of the 8-bit pictures, or None when a side is too small for five scales."""
    if min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    return ms_ssim(to_pixels(original), to_pixels(reconstruction), data_range=MAX_VALUE).item()
