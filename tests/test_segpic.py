"""SegPIC network: published layout, forward contract, and bit-exact compress/decompress."""

import json
import math
import re
from importlib.resources import files

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from PIL import Image
from torchvision.models.swin_transformer import _get_relative_position_bias, shifted_window_attention

from model.attention import ShiftedWindowAttention
from model import plain
from model.entropy_coding import RansTables, build_indexes, decode_symbols, encode_symbols
from model.segpic import SegPIC
from pipeline.sample import sample_photo_paths

from random_codecs import random_segpic

TINY = {"N": 24, "M": 40}
LEGACY_LEAF = re.compile(r"\._(matrix|bias|factor)(\d+)$")
PLURAL = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


def photo(index: int, width: int, height: int) -> torch.Tensor:
    """A crop of a real sample photograph as (1,3,H,W) in [0,1]."""
    with Image.open(sample_photo_paths()[index]) as image:
        pixels = np.asarray(image.convert("RGB").crop((0, 0, width, height)), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def two_region_mask(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width, dtype=torch.int64)
    mask[:, height // 2 :, :] = 1
    mask[:, :, width // 2 :] += 2
    return mask


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model() -> SegPIC:
    model = random_segpic(0, **TINY).eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def published_model() -> SegPIC:
    torch.manual_seed(0)
    model = SegPIC().eval()
    model.update(force=True)
    return model


def published_layout() -> dict[str, dict]:
    """The published key list, with CompressAI 1.1 bottleneck names in 1.2 spelling."""
    text = files("model").joinpath("reference/segpic_official_keys.json").read_text()
    rename = lambda key: LEGACY_LEAF.sub(lambda m: f".{PLURAL[m[1]]}.{m[2]}", key)  # noqa: E731
    return {rename(entry["key"]): {**entry, "of": rename(entry.get("of", ""))} for entry in json.loads(text)["keys"]}


def test_default_state_dict_matches_published_layout(published_model):
    state = published_model.state_dict()
    layout = published_layout()
    assert sorted(state) == sorted(layout)
    for key, entry in layout.items():
        assert str(state[key].dtype) == f"torch.{entry['dtype']}", key
        if entry["kind"] in ("param", "const", "alias"):
            assert list(state[key].shape) == entry["shape"], key
        if entry["kind"] == "const":
            expected = torch.tensor(entry["value"], dtype=state[key].dtype).reshape(entry["shape"])
            assert torch.equal(state[key], expected), key
        if entry["kind"] == "alias":
            assert state[key].data_ptr() == state[entry["of"]].data_ptr(), key


def test_forward_with_grid_returns_reconstruction_and_four_likelihoods():
    torch.manual_seed(1)
    model = SegPIC(**TINY)
    x = photo(0, 128, 64)
    out = model(x, grid=2)
    assert out["x_hat"].shape == x.shape
    likelihoods = out["likelihoods"]
    assert set(likelihoods) == {"y", "z", "z_center", "z_center2"}
    assert likelihoods["y"].shape == (1, 40, 4, 8)
    assert likelihoods["z"].shape == (1, 24, 1, 2)
    assert likelihoods["z_center"].shape == likelihoods["z_center2"].shape == (1, 12, 2, 2)
    assert all(bool(((lik > 0) & (lik <= 1)).all()) for lik in likelihoods.values())


def test_forward_with_mask_codes_one_prototype_per_region_and_trains():
    torch.manual_seed(2)
    model = SegPIC(**TINY)
    x = torch.cat([photo(0, 64, 64), photo(1, 64, 64)])
    mask = torch.cat([two_region_mask(64, 64), torch.zeros(1, 64, 64, dtype=torch.int64)])
    out = model(x, mask=mask)
    # 4 regions in the first image, 1 in the second, at both scales.
    assert out["likelihoods"]["z_center"].shape == (5, 12, 1, 1)
    assert out["likelihoods"]["z_center2"].shape == (5, 12, 1, 1)
    bpp = sum(lik.log2().sum() for lik in out["likelihoods"].values()) / (-2 * 64 * 64)
    loss = 0.01 * 255**2 * torch.mean((out["x_hat"] - x) ** 2) + bpp
    loss.backward()
    assert model.basic_E[0].conv_groups[0].weight.grad.abs().sum() > 0
    assert model.g_ab[0].weight.grad.abs().sum() > 0


def test_mask_regions_change_the_reconstruction():
    torch.manual_seed(3)
    model = SegPIC(**TINY).eval()
    with torch.no_grad():  # spread the prototype codes so rounding keeps regions apart
        model.g_ab[4].weight.mul_(100)
        model.g_ab2[4].weight.mul_(100)
        x = photo(2, 64, 64)
        one_region = model(x, mask=torch.zeros(1, 64, 64, dtype=torch.int64))["x_hat"]
        four_regions = model(x, mask=two_region_mask(64, 64))["x_hat"]
    assert not torch.equal(one_region, four_regions)


def test_compress_decompress_reproduces_eval_forward_exactly(tiny_model):
    x = photo(3, 128, 64)
    with torch.no_grad():
        expected = tiny_model(x, grid=4)["x_hat"]
    coded = tiny_model.compress(x, grid=4)
    assert [len(streams) for streams in coded["strings"]] == [1, 1, 1, 1]
    assert len(coded["strings"][0][0]) > 500
    assert tuple(coded["shape"]) == (1, 2)
    decoded = tiny_model.decompress(coded["strings"], coded["shape"], grid=4)["x_hat"]
    assert torch.equal(decoded, expected)


def test_batch_compress_gives_one_stream_per_image(tiny_model):
    x = torch.cat([photo(4, 64, 64), photo(5, 64, 64)])
    coded = tiny_model.compress(x)
    assert [len(streams) for streams in coded["strings"]] == [2, 2, 2, 2]
    decoded = tiny_model.decompress(coded["strings"], coded["shape"])["x_hat"]
    single = tiny_model.compress(x[1:])
    assert single["strings"][0][0] == coded["strings"][0][1]
    with torch.no_grad():
        assert torch.equal(decoded, tiny_model(x)["x_hat"])


def test_published_size_round_trip_is_exact(published_model):
    x = photo(6, 64, 64)
    with torch.no_grad():
        expected = published_model(x)["x_hat"]
    coded = published_model.compress(x)
    decoded = published_model.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert torch.equal(decoded, expected)


def test_update_uses_published_scale_table(tiny_model):
    expected = torch.exp(torch.linspace(math.log(0.11), math.log(256), 64))
    assert torch.allclose(tiny_model.gaussian_conditional.scale_table, expected)
    for bottleneck in (tiny_model.entropy_bottleneck, tiny_model.entropy_bottleneck_b, tiny_model.entropy_bottleneck_b2):
        assert bottleneck._quantized_cdf.numel() > 0


def test_own_state_dict_loads_despite_bottleneck_name_prefixes(tiny_model):
    restored = SegPIC(**TINY)
    restored.update(force=True)  # tables of another size already present
    restored.load_state_dict(tiny_model.state_dict())
    restored.eval()
    x = photo(7, 64, 64)
    coded = tiny_model.compress(x)
    assert restored.compress(x)["strings"] == coded["strings"]
    assert torch.equal(
        restored.decompress(coded["strings"], coded["shape"])["x_hat"],
        tiny_model.decompress(coded["strings"], coded["shape"])["x_hat"],
    )


def test_unsupported_widths_are_rejected():
    with pytest.raises(ValueError, match="N % 24"):
        SegPIC(N=20, M=40)


def test_input_sides_must_be_multiples_of_64(tiny_model):
    with pytest.raises(ValueError, match="70x64 is not a multiple of 64"):
        tiny_model.compress(photo(0, 64, 70))


def coded_grid(features, analysis, bottleneck, synthesis) -> torch.Tensor:
    """Prototype grid (4×4) through its bottleneck's real coder, as the published compress does."""
    strings = bottleneck.compress(analysis(F.adaptive_avg_pool2d(features, 4)))
    return synthesis(bottleneck.decompress(strings, (4, 4)))


def published_y_stream(model: SegPIC, x: torch.Tensor) -> bytes:
    """The y stream as the published compress writes it: per-slice Python lists, one encoder."""
    y1 = model.g_a1(x)
    prototypes1 = coded_grid(y1, model.g_ab, model.entropy_bottleneck_b, model.g_sb)
    y = model.g_a2(model.dyn_encoder(y1, prototypes1))
    prototypes2 = coded_grid(y, model.g_ab2, model.entropy_bottleneck_b2, model.g_sb2)
    z = model.h_a(model.dyn_enc_hyper(y, prototypes2))
    z_hat = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
    latent_scales = model.dyn_dec_hyper_scales(model.h_scale_s(z_hat), prototypes2)
    latent_means = model.dyn_dec_hyper_means(model.h_mean_s(z_hat), prototypes2)
    conditional = model.gaussian_conditional
    symbols_list, indexes_list, y_hat_slices = [], [], []
    for index, y_slice in enumerate(y.chunk(10, 1)):
        support = y_hat_slices[:5]
        mean_support = torch.cat([latent_means] + support, dim=1)
        mu = model.cc_mean_transforms[index](mean_support)
        scale = model.cc_scale_transforms[index](torch.cat([latent_scales] + support, dim=1))
        y_q_slice = conditional.quantize(y_slice, "symbols", mu)
        symbols_list.extend(y_q_slice.reshape(-1).tolist())
        indexes_list.extend(conditional.build_indexes(scale).reshape(-1).tolist())
        y_hat_slice = y_q_slice + mu
        lrp = model.lrp_transforms[index](torch.cat([mean_support, y_hat_slice], dim=1))
        y_hat_slices.append(y_hat_slice + 0.5 * torch.tanh(lrp))
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(
        symbols_list,
        indexes_list,
        conditional.quantized_cdf.tolist(),
        conditional.cdf_length.reshape(-1).int().tolist(),
        conditional.offset.reshape(-1).int().tolist(),
    )
    return encoder.flush()


def test_y_stream_is_the_published_coders_stream(tiny_model):
    x = photo(9, 128, 128)
    with torch.inference_mode():
        expected = published_y_stream(tiny_model, x)
    assert len(expected) > 500
    assert tiny_model.compress(x)["strings"][0][0] == expected


def test_trimmed_cdf_tables_code_the_padded_tables_streams(tiny_model):
    """Every table, symbols inside and beyond its range (the coder's bypass): the CDF rows cut
    to their lengths give the published coder's bytes and decode to the same symbols."""
    conditional = tiny_model.gaussian_conditional
    trimmed, padded = (RansTables.from_conditional(conditional, trimmed=flag) for flag in (True, False))
    assert sum(map(len, trimmed.cdfs)) * 5 < sum(map(len, padded.cdfs))
    generator = torch.Generator().manual_seed(0)
    indexes = torch.arange(len(padded.cdfs)).repeat_interleave(400).int()
    halves = (torch.tensor(padded.cdf_lengths) // 2)[indexes.long()]
    symbols = (torch.randn(indexes.shape, generator=generator) * 1.3 * halves).round().int()
    assert (symbols.abs() > halves).any()  # some escape the tables
    stream = encode_symbols(symbols, indexes, trimmed)
    assert stream == plain.encode_symbols(symbols, indexes, padded)
    decoder = RansDecoder()
    decoder.set_stream(stream)
    assert torch.equal(decode_symbols(decoder, indexes, trimmed), symbols)


def test_fast_cdf_indexes_equal_compressai_loop_at_every_boundary(tiny_model):
    conditional = tiny_model.gaussian_conditional
    table = conditional.scale_table
    scales = torch.cat([table, table * (1 + 1e-6), table * (1 - 1e-6), torch.tensor([0.0, 1e-3, 1e4])])
    scales = torch.cat([scales, torch.rand(1000) * 300]).view(1, 1, -1, 1)
    assert torch.equal(build_indexes(conditional, scales), conditional.build_indexes(scales))


def test_cached_coder_tables_follow_update():
    model = SegPIC(**TINY)
    model.update(force=True)
    first = model.rans_tables()
    assert model.rans_tables() is first
    model.update(scale_table=torch.exp(torch.linspace(math.log(0.2), math.log(64), 32)), force=True)
    refreshed = model.rans_tables()
    assert len(refreshed.cdfs) == 32 and len(first.cdfs) == 64


def test_window_attention_equals_torchvision_swin_attention():
    torch.manual_seed(4)
    layer = ShiftedWindowAttention(dim=16, heads=8, window=4, shift=2)
    torch.nn.init.normal_(layer.attn.relative_position_bias_table)
    x = torch.randn(2, 16, 12, 8)
    attn = layer.attn
    bias = _get_relative_position_bias(attn.relative_position_bias_table, attn.relative_position_index, [4, 4])
    expected = shifted_window_attention(
        x.permute(0, 2, 3, 1), attn.qkv.weight, attn.proj.weight, bias, [4, 4], 8, [2, 2],
        qkv_bias=attn.qkv.bias, proj_bias=attn.proj.bias, training=False,
    ).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.allclose(layer(x) - x, expected, atol=1e-5)
