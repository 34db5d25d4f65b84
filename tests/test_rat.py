"""The fast kernels equal the plain formulas of `model.plain` (values and gradients), RAT wires
them as spec §2 says, and the y-slice coder writes the same stream as the published list coder."""

import json
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.ans import RansDecoder
from compressai.entropy_models import GaussianConditional
from compressai.models.base import get_scale_table
from PIL import Image

from model import entropy_coding, plain, rat
from pipeline.sample import sample_photo_paths


def _random(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)


def _values_and_grads(function, inputs: tuple[torch.Tensor, ...], *args) -> tuple[torch.Tensor, ...]:
    output = function(*inputs, *args)
    output = output[0] if isinstance(output, tuple) else output
    weights = torch.linspace(-1.0, 1.0, output.numel(), dtype=output.dtype).view_as(output)
    grads = torch.autograd.grad((output * weights).sum(), inputs)
    return (output, *grads)


def _assert_same(fast: tuple[torch.Tensor, ...], reference: tuple[torch.Tensor, ...]) -> None:
    for got, expected in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _photo_label_map(size: int, bins: int) -> torch.Tensor:
    """Label map of a real photograph: grey levels quantised into `bins` regions."""
    camera = next(path for path in sample_photo_paths() if path.name == "camera.png")
    grey = np.asarray(Image.open(camera).convert("L").resize((size, size), Image.NEAREST))
    return torch.from_numpy(grey.astype(np.int64) * bins // 256)


@pytest.mark.parametrize(
    ("batch", "channels", "height", "width", "kernel_size"),
    [(2, 3, 5, 7, 3), (1, 4, 1, 1, 3), (3, 2, 6, 4, 5), (1, 2, 3, 3, 1), (2, 5, 2, 9, 3)],
)
def test_dps_conv_equals_unfold_einsum(batch, channels, height, width, kernel_size):
    u = _random(batch, channels, height, width, seed=1)
    kernels = _random(batch, channels, kernel_size**2, height, width, seed=2)
    _assert_same(
        _values_and_grads(rat.dps_conv, (u, kernels), kernel_size),
        _values_and_grads(plain.dps_conv, (u, kernels), kernel_size),
    )


@pytest.mark.parametrize("seed", range(4))
def test_kernels_equal_plain_ones_at_random_shapes(seed):
    generator = torch.Generator().manual_seed(100 + seed)
    batch, channels, height, width = (int(v) for v in torch.randint(1, 7, (4,), generator=generator))
    kernel_size = int(torch.randint(0, 3, (1,), generator=generator)) * 2 + 1
    u = _random(batch, channels, height, width, seed=seed)
    kernels = _random(batch, channels, kernel_size**2, height, width, seed=seed + 1)
    _assert_same(
        _values_and_grads(rat.dps_conv, (u, kernels), kernel_size),
        _values_and_grads(plain.dps_conv, (u, kernels), kernel_size),
    )
    regions = torch.randint(1, 9, (batch, 1, 1), generator=generator)
    labels = (torch.rand(batch, height, width, generator=generator) * regions).long()
    _assert_same(
        _values_and_grads(rat.masked_average_pool, (u,), labels),
        _values_and_grads(plain.masked_average_pool, (u,), labels),
    )
    prototypes, counts = rat.masked_average_pool(u.detach(), labels)
    table = _random(*prototypes.shape, seed=seed + 2)
    _assert_same(
        _values_and_grads(rat.expand_prototypes, (table,), counts, labels),
        _values_and_grads(plain.expand_prototypes, (table,), counts, labels),
    )


def test_dps_conv_passes_gradcheck():
    u = _random(1, 2, 4, 5, seed=3)
    kernels = _random(1, 2, 9, 4, 5, seed=4)
    assert torch.autograd.gradcheck(lambda a, b: rat.dps_conv(a, b, 3), (u, kernels))


def test_dps_conv_saves_no_unfolded_copy():
    u = torch.randn(2, 8, 16, 16, requires_grad=True)
    kernels = torch.randn(2, 8, 9, 16, 16, requires_grad=True)
    saved_bytes = {"fast": 0, "plain": 0}
    for name, function in (("fast", rat.dps_conv), ("plain", plain.dps_conv)):
        def pack(tensor, name=name):
            saved_bytes[name] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function(u, kernels, 3).sum().backward()
    inputs_bytes = (u.numel() + kernels.numel()) * 4
    assert saved_bytes["fast"] <= inputs_bytes
    unfolded_bytes = 9 * u.numel() * 4
    assert saved_bytes["plain"] >= kernels.numel() * 4 + unfolded_bytes


def test_dps_conv_rejects_mismatched_kernels():
    with pytest.raises(ValueError, match="kernels must have shape"):
        rat.dps_conv(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 8, 4, 4), 3)


def test_pooling_and_expansion_equal_one_hot_loop_for_mixed_batch():
    labels = torch.stack(
        [
            torch.randint(0, 7, (6, 5), generator=torch.Generator().manual_seed(5)),
            torch.zeros(6, 5, dtype=torch.int64),  # a single region
            torch.full((6, 5), 3, dtype=torch.int64),  # only id 3: ids 0..2 are absent
        ]
    )
    features = _random(3, 4, 6, 5, seed=6)
    _assert_same(
        _values_and_grads(rat.masked_average_pool, (features,), labels),
        _values_and_grads(plain.masked_average_pool, (features,), labels),
    )
    prototypes, counts = rat.masked_average_pool(features, labels)
    assert counts.tolist() == [int(labels[0].max()) + 1, 1, 4]
    table = _random(prototypes.shape[0], 4, seed=7)
    _assert_same(
        _values_and_grads(rat.expand_prototypes, (table,), counts, labels),
        _values_and_grads(plain.expand_prototypes, (table,), counts, labels),
    )


def test_absent_regions_get_zero_prototypes_and_exact_formula():
    labels = torch.tensor([[[0, 0], [2, 2]]])
    features = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], dtype=torch.float64)
    prototypes, counts = rat.masked_average_pool(features, labels)
    assert counts.tolist() == [3]
    expected = torch.tensor([[4.0 / 2.0005], [0.0], [12.0 / 2.0005]], dtype=torch.float64)
    torch.testing.assert_close(prototypes, expected, rtol=0, atol=0)


def test_labels_vanishing_after_downsampling_a_real_label_map():
    full = _photo_label_map(64, bins=24).unsqueeze(0)
    quarter = F.interpolate(full[:, None].float(), scale_factor=0.25, mode="nearest").long()[:, 0]
    present = set(torch.unique(quarter).tolist())
    assert len(present) < int(quarter.max()) + 1, "the photo's small regions should vanish at 1/4 scale"
    features = _random(1, 3, 16, 16, seed=8)
    fast = _values_and_grads(rat.masked_average_pool, (features,), quarter)
    _assert_same(fast, _values_and_grads(plain.masked_average_pool, (features,), quarter))
    absent = [region for region in range(int(quarter.max()) + 1) if region not in present]
    assert torch.count_nonzero(fast[0][absent]) == 0


def test_pooling_rejects_bad_label_maps():
    with pytest.raises(ValueError, match="non-negative"):
        rat.masked_average_pool(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, -1], [0, 0]]]))
    with pytest.raises(ValueError, match="int64"):
        rat.masked_average_pool(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="do not match"):
        rat.masked_average_pool(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, dtype=torch.int64))


def test_expansion_rejects_labels_beyond_the_prototype_table():
    with pytest.raises(ValueError, match="beyond"):
        rat.expand_prototypes(torch.zeros(2, 3), torch.tensor([2]), torch.tensor([[[0, 2]]]))
    with pytest.raises(ValueError, match="rows"):
        rat.expand_prototypes(torch.zeros(3, 3), torch.tensor([2]), torch.tensor([[[0, 1]]]))


def test_rat_with_grid_equals_rat_with_the_matching_label_map():
    torch.manual_seed(9)
    module = rat.RAT(6, 4).double()
    features = _random(2, 6, 8, 8, seed=10)
    grid = _random(2, 4, 4, 4, seed=11)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    label_map = ((rows // 2) * 4 + cols // 2).expand(2, 8, 8).contiguous()
    table = grid.permute(0, 2, 3, 1).reshape(-1, 4)
    with_grid = module(features, grid)
    with_mask = module(features, table, label_map)
    assert with_grid.shape == features.shape
    torch.testing.assert_close(with_mask, with_grid, rtol=1e-12, atol=1e-12)
    (gradient,) = torch.autograd.grad(with_mask.sum(), grid)
    assert torch.count_nonzero(gradient) == gradient.numel()


def test_rat_forward_follows_spec_with_plain_kernels():
    torch.manual_seed(12)
    module = rat.RAT(5, 3).double()
    features = _random(1, 5, 6, 6, seed=13)
    label_map = torch.randint(0, 4, (1, 6, 6), generator=torch.Generator().manual_seed(14))
    prototypes, counts = plain.masked_average_pool(_random(1, 3, 6, 6, seed=15), label_map)
    expanded = plain.expand_prototypes(prototypes, counts, label_map)
    u = module.conv(features)
    kernels = module.k_sp_gen(torch.cat([u, expanded], dim=1)).view(1, 5, 9, 6, 6)
    o = plain.dps_conv(u, kernels, 3)
    expected = module.conv_out(module.k_ch_gen(o) * o) + features
    torch.testing.assert_close(module(features, prototypes, label_map), expected, rtol=1e-12, atol=1e-12)


def test_rat_state_dict_matches_the_published_layout():
    layout = json.loads(resources.files("model").joinpath("reference/segpic_official_keys.json").read_text())
    published = {
        entry["key"].removeprefix("dyn_encoder."): tuple(entry["shape"])
        for entry in layout["keys"]
        if entry["key"].startswith("dyn_encoder.")
    }
    ours = {name: tuple(tensor.shape) for name, tensor in rat.RAT(192, 192).state_dict().items()}
    assert ours == published


def test_slice_coder_equals_the_published_list_coder():
    conditional = GaussianConditional(None)
    conditional.update_scale_table(get_scale_table())
    conditional.update()
    generator = torch.Generator().manual_seed(16)
    scales = torch.rand(1, 20, 6, 5, generator=generator) * 40
    scales[0, 0, 0, :3] = torch.tensor([0.05, 0.11, 256.0])  # table ends and below the bound
    symbols = (torch.randn(1, 20, 6, 5, generator=generator) * scales).round().int()
    indexes = entropy_coding.build_indexes(conditional, scales)
    assert torch.equal(indexes, plain.build_indexes(conditional, scales))
    tables = entropy_coding.RansTables.from_conditional(conditional)
    stream = entropy_coding.encode_symbols(symbols[0], indexes[0], tables)
    assert stream == plain.encode_symbols(symbols[0], indexes[0], tables)
    for decode in (entropy_coding.decode_symbols, plain.decode_symbols):
        decoder = RansDecoder()
        decoder.set_stream(stream)
        assert torch.equal(decode(decoder, indexes[0], tables), symbols[0])
