"""WACNN baseline and the architecture registry: same protocol as SegPIC, exact round trip."""

import numpy as np
import pytest
import torch
from PIL import Image

from model.architectures import ARCHITECTURES, architecture_name, build_model
from model.segpic import SegPIC
from model.wacnn import WACNN
from pipeline.sample import sample_photo_paths

from random_codecs import random_wacnn


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def wacnn() -> WACNN:
    model = random_wacnn(0).eval()
    model.update(force=True)
    return model


def photo(index: int, width: int, height: int) -> torch.Tensor:
    with Image.open(sample_photo_paths()[index]) as image:
        pixels = np.asarray(image.convert("RGB").crop((0, 0, width, height)), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def test_forward_returns_reconstruction_and_y_z_likelihoods():
    torch.manual_seed(1)
    model = WACNN(N=32, M=40)
    x = photo(0, 128, 64)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert set(out["likelihoods"]) == {"y", "z"}
    assert out["likelihoods"]["y"].shape == (1, 40, 4, 8)
    assert out["likelihoods"]["z"].shape == (1, 32, 1, 2)
    out["x_hat"].mean().backward()
    assert model.g_a[0].weight.grad.abs().sum() > 0


def test_mask_and_grid_are_ignored(wacnn):
    x = photo(1, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.int64)
    with torch.no_grad():
        assert torch.equal(wacnn(x)["x_hat"], wacnn(x, mask=mask, grid=2)["x_hat"])


def test_compress_decompress_reproduces_eval_forward_exactly(wacnn):
    x = photo(2, 64, 128)
    with torch.no_grad():
        expected = wacnn(x)["x_hat"]
    coded = wacnn.compress(x)
    assert [len(streams) for streams in coded["strings"]] == [1, 1]
    assert len(coded["strings"][0][0]) > 500
    decoded = wacnn.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert torch.equal(decoded, expected)


def test_published_widths_build_the_standard_layout():
    model = WACNN()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes["g_a.0.weight"] == (192, 3, 5, 5)
    assert shapes["g_a.7.weight"] == (320, 192, 5, 5)
    assert shapes["g_a.4.conv_b.0.attn.relative_position_bias_table"] == (225, 8)
    assert shapes["g_s.8.weight"] == (192, 3, 5, 5)
    assert shapes["h_a.8.weight"] == (192, 224, 3, 3)
    assert shapes["cc_mean_transforms.9.0.weight"] == (224, 480, 3, 3)
    assert shapes["lrp_transforms.9.0.weight"] == (224, 512, 3, 3)
    assert not any(key.startswith(("dyn_", "g_ab", "basic_")) for key in shapes)


def test_registry_builds_each_architecture_and_names_it_back():
    assert set(ARCHITECTURES) == {"segpic", "wacnn"}
    segpic = build_model("segpic", N=24, M=40)
    wacnn = build_model("wacnn", N=32, M=40)
    assert isinstance(segpic, SegPIC) and (segpic.N, segpic.M) == (24, 40)
    assert isinstance(wacnn, WACNN)
    assert architecture_name(segpic) == "segpic"
    assert architecture_name(wacnn) == "wacnn"


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'vtm'.*segpic, wacnn"):
        build_model("vtm")
