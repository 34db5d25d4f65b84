"""The published rate-distortion objective (`docs/architecture.md` §5) and the optimisers that minimise it."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

QUANTILES = "quantiles"


@dataclass(frozen=True)
class RateDistortion:
    """Loss terms of one batch; `loss` is what the main optimiser minimises."""

    loss: torch.Tensor
    bpp: torch.Tensor
    mse: torch.Tensor


def rate_distortion(output: dict, target: torch.Tensor, lmbda: float) -> RateDistortion:
    """λ·255²·MSE + bpp, the rate summed over every likelihood tensor (y, z and both prototype streams).

    target: (B, 3, H, W) in [0, 1]; computed in float32 even under bf16 autocast.
    """
    batch, _, height, width = target.shape
    pixels = batch * height * width
    bpp = sum(
        torch.log(likelihoods.float()).sum() / (-math.log(2) * pixels)
        for likelihoods in output["likelihoods"].values()
    )
    mse = F.mse_loss(output["x_hat"].float(), target)
    return RateDistortion(lmbda * 255**2 * mse + bpp, bpp, mse)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, auxiliary) parameters: the entropy bottlenecks' `quantiles` train only on aux_loss()."""
    main, aux = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (aux if name.endswith(QUANTILES) else main).append(parameter)
    return main, aux
