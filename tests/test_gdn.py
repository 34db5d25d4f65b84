"""Our GDN: CompressAI's forward bit for bit, the same gradients through one fused backward."""

import pytest
import torch
from compressai.layers import GDN as CompressAIGDN

from model.gdn import GDN


def trained_like_pair(channels: int, inverse: bool) -> tuple[GDN, CompressAIGDN]:
    """Ours and CompressAI's GDN with the same non-trivial γ and β (not the identity-like initial ones)."""
    torch.manual_seed(channels + inverse)
    ours = GDN(channels, inverse=inverse)
    with torch.no_grad():
        ours.gamma.add_(0.05 * torch.rand_like(ours.gamma))
        ours.beta.add_(0.3 * torch.rand_like(ours.beta))
    theirs = CompressAIGDN(channels, inverse=inverse)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def output_and_gradients(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    return [out.detach(), x.grad, module.gamma.grad, module.beta.grad]


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_forward_is_compressais_bit_for_bit_and_gradients_match(inverse, memory_format):
    ours, theirs = trained_like_pair(24, inverse)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 16, 12, generator=generator).contiguous(memory_format=memory_format)
    grad = torch.randn(x.shape, generator=generator)
    out, *gradients = output_and_gradients(ours, x, grad)
    expected_out, *expected_gradients = output_and_gradients(theirs, x, grad)
    assert torch.equal(out, expected_out)
    for name, value, expected in zip(("x", "gamma", "beta"), gradients, expected_gradients):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")


@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_pass_gradcheck_in_float64(inverse):
    ours = GDN(5, inverse=inverse).double()
    with torch.no_grad():
        ours.gamma.add_(0.05)
    x = torch.randn(1, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ours, (x,))
    gamma, beta = ours.gamma.detach().requires_grad_(), ours.beta.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda g, b: torch.func.functional_call(ours, {"gamma": g, "beta": b}, (x,)), (gamma, beta))


def test_input_without_gradient_still_trains_gamma_and_beta():
    ours, theirs = trained_like_pair(8, False)
    x = torch.rand(1, 8, 5, 5)
    ours(x).sum().backward()
    theirs(x).sum().backward()
    torch.testing.assert_close(ours.gamma.grad, theirs.gamma.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.beta.grad, theirs.beta.grad, rtol=1e-5, atol=1e-7)
