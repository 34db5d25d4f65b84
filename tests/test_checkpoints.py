"""Our checkpoint format: written atomically, rebuilt from arch + model_args, hashed stably."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from model import checkpoints
from model.architectures import build_model
from pipeline.sample import sample_photo_paths

SMALL = {"N": 24, "M": 40}


def _trained_like(arch: str, seed: int):
    """A codec whose weights differ from a fresh one's, as after training."""
    model = build_model(arch, **SMALL)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    return model


def _photo() -> torch.Tensor:
    image = Image.open(sample_photo_paths()[2]).convert("RGB").resize((64, 64))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("arch", ["segpic", "wacnn"])
def test_saved_codec_loads_back_ready_to_code(tmp_path, arch):
    model = _trained_like(arch, seed=1)
    path = tmp_path / "nested" / "codec.pt"
    checkpoints.save_codec(path, model, arch, SMALL, extra={"epoch": 7, "optimizer": {"lr": 1e-4}})
    assert [p.name for p in path.parent.iterdir()] == ["codec.pt"]
    loaded = checkpoints.load_codec(path)
    assert type(loaded) is type(model) and not loaded.training
    assert checkpoints.weights_hash(loaded) == checkpoints.weights_hash(model)
    model.eval().update()
    x = _photo()
    compressed = loaded.compress(x)
    assert compressed["strings"] == model.compress(x)["strings"]
    decoded = loaded.decompress(compressed["strings"], compressed["shape"])["x_hat"]
    assert decoded.shape == x.shape


def test_checkpoint_records_format_and_model_args(tmp_path):
    path = tmp_path / "codec.pt"
    checkpoints.save_codec(path, _trained_like("segpic", seed=2), "segpic", SMALL, extra={"epoch": 1})
    stored = torch.load(path, weights_only=True)
    assert stored["format"] == "segpic-checkpoint"
    assert stored["format_version"] == checkpoints.FORMAT_VERSION
    assert (stored["arch"], stored["model_args"], stored["epoch"]) == ("segpic", SMALL, 1)


@pytest.mark.slow
def test_load_codec_accepts_the_published_layout(tmp_path):
    model = _trained_like("segpic", seed=3)
    path = tmp_path / "published.pth.tar"
    checkpoints.save_official_checkpoint(path, model)
    assert "format" not in torch.load(path, weights_only=True)
    assert checkpoints.weights_hash(checkpoints.load_codec(path)) == checkpoints.weights_hash(model)
    model_full = build_model("segpic")
    full_path = tmp_path / "published_full.pth.tar"
    checkpoints.save_official_checkpoint(full_path, model_full)
    loaded = checkpoints.load_codec(full_path)
    assert checkpoints.weights_hash(loaded) == checkpoints.weights_hash(model_full)


def test_extra_entries_may_not_replace_format_keys(tmp_path):
    with pytest.raises(ValueError, match="state_dict"):
        checkpoints.save_codec(tmp_path / "x.pt", build_model("wacnn", **SMALL), "wacnn", SMALL, {"state_dict": {}})
    assert not list(tmp_path.iterdir())


def test_newer_versions_wrong_widths_and_unknown_architectures_are_rejected(tmp_path):
    path = tmp_path / "codec.pt"
    checkpoints.save_codec(path, build_model("wacnn", **SMALL), "wacnn", SMALL)
    stored = torch.load(path, weights_only=True)
    torch.save({**stored, "format_version": checkpoints.FORMAT_VERSION + 1}, path)
    with pytest.raises(ValueError, match="format version 2 is not supported"):
        checkpoints.load_codec(path)
    torch.save({**stored, "model_args": {"N": 48, "M": 40}}, path)
    with pytest.raises(ValueError, match=r"codec.pt: cannot rebuild wacnn"):
        checkpoints.load_codec(path)
    torch.save({**stored, "arch": "resnet"}, path)
    with pytest.raises(ValueError, match=r"codec.pt: cannot rebuild resnet.*unknown architecture"):
        checkpoints.load_codec(path)


def test_weights_hash_tracks_weights_not_coder_tables():
    model = _trained_like("segpic", seed=4)
    before = checkpoints.weights_hash(model)
    model.update(force=True)
    assert checkpoints.weights_hash(model) == before
    with torch.no_grad():
        model.dyn_decoder.conv_out.bias[0] += 1e-6
    assert checkpoints.weights_hash(model) != before
    assert len(before) == 64 and int(before, 16) >= 0


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "codec.pt"
    model = build_model("wacnn", **SMALL)
    checkpoints.save_codec(path, model, "wacnn", SMALL, extra={"epoch": 1})
    with pytest.raises((pickle.PicklingError, AttributeError)):
        checkpoints.save_codec(path, model, "wacnn", SMALL, extra={"epoch": 2, "callback": lambda: None})
    assert [p.name for p in tmp_path.iterdir()] == ["codec.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_are_written_with_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        checkpoints.save_codec(tmp_path / "codec.pt", build_model("wacnn", **SMALL), "wacnn", SMALL)
    finally:
        os.umask(previous)
    assert (tmp_path / "codec.pt").stat().st_mode & 0o777 == 0o666 & ~umask
