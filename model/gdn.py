"""GDN / IGDN (Ballé et al.) with one backward pass instead of autograd's chain of small ones.

`GDN` is CompressAI's layer (same parameters, buffers and forward arithmetic, so published
checkpoints load and decode bit for bit); only its gradient is computed differently.
Autograd differentiates `x * rsqrt(conv(x², γ, β))` op by op: a power backward, a reciprocal
square-root backward, a product backward and the sum of the two paths into x, each a pass over
the activations with a fresh tensor. Here the same gradient takes four passes with no temporaries
besides the convolution's own: g·norm, g·x scaled by d norm/d s in place, the convolution
backward, and one multiply-add of its input gradient into the result.
"""

import torch
import torch.nn.functional as F
from compressai.layers import GDN as CompressAIGDN
from torch import Tensor


class _GDNFunction(torch.autograd.Function):
    """out = x · s^(-1/2) (GDN) or x · s^(1/2) (IGDN), s = conv1x1(x², γ) + β."""

    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor, beta: Tensor, inverse: bool) -> Tensor:
        squares = x**2
        norm = F.conv2d(squares, gamma, beta)
        norm = torch.sqrt(norm) if inverse else torch.rsqrt(norm)
        ctx.save_for_backward(x, squares, gamma, norm)
        ctx.inverse = inverse
        return x * norm

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, squares, gamma, norm = ctx.saved_tensors
        need_x, need_gamma, need_beta, _ = ctx.needs_input_grad
        grad_s = grad_out * x  # dL/d norm, made dL/d s up to a constant factor in place
        if ctx.inverse:
            grad_s.div_(norm)  # d norm/d s = 0.5 / norm
            factor = 0.5
        else:
            grad_s.mul_(norm).mul_(norm).mul_(norm)  # d norm/d s = -0.5 · norm³
            factor = -0.5
        grad_squares, grad_gamma, grad_beta = torch.ops.aten.convolution_backward(
            grad_s, squares, gamma, [gamma.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need_x, need_gamma, need_beta],
        )
        grad_x = None
        if need_x:
            grad_x = grad_out * norm
            grad_x.addcmul_(x, grad_squares, value=2 * factor)
        return (
            grad_x,
            grad_gamma.mul_(factor) if need_gamma else None,
            grad_beta.mul_(factor) if need_beta else None,
            None,
        )


class GDN(CompressAIGDN):
    """CompressAI's GDN (`inverse=True`: IGDN) whose gradient is computed in one fused backward."""

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        return _GDNFunction.apply(x, gamma, beta, self.inverse)
