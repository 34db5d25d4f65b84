"""Published SegPIC checkpoints load into our model and our models export to their layout."""

import json
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from model import official
from model.architectures import build_model
from model.checkpoints import load_codec, weights_hash
from pipeline.sample import sample_photo_paths

SMALL = {"N": 24, "M": 40}


def _reference_layout() -> dict[str, dict]:
    text = resources.files("model").joinpath("reference/segpic_official_keys.json").read_text()
    return {entry["key"]: entry for entry in json.loads(text)["keys"]}


def _perturbed_segpic(seed: int, **widths: int):
    """A SegPIC whose every float tensor differs from its neighbours', so a swapped key shows."""
    model = build_model("segpic", **widths)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    return model


def _published_file(tmp_path, model, prefix: str = "module.") -> str:
    """Write `model` the way the published checkpoints were written (DataParallel prefix, extras)."""
    state = {prefix + key: tensor.clone() for key, tensor in official.export_official_state_dict(model).items()}
    path = tmp_path / "published.pth.tar"
    torch.save({"epoch": 3, "loss": 0.5, "state_dict": state}, path)
    return str(path)


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def _photo(size: int) -> torch.Tensor:
    image = Image.open(sample_photo_paths()[0]).convert("RGB").resize((size, size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


def test_export_matches_the_published_layout_exactly():
    layout = _reference_layout()
    exported = official.export_official_state_dict(build_model("segpic"))
    assert exported.keys() == layout.keys()
    for key, entry in layout.items():
        tensor = exported[key]
        assert (list(tensor.shape), str(tensor.dtype).removeprefix("torch.")) == (entry["shape"], entry["dtype"]), key
        if entry["kind"] == "const":
            assert tensor.flatten().tolist() == pytest.approx(entry["value"], rel=1e-7, abs=0), key
        if entry["kind"] == "alias":
            assert exported[entry["of"]].data_ptr() == tensor.data_ptr(), key
        if entry["kind"] == "empty":
            assert tensor.numel() == 0, key


@pytest.mark.slow
def test_published_size_checkpoint_loads_and_round_trips_bit_exactly(tmp_path):
    original = _perturbed_segpic(seed=1)
    loaded = official.load_official_checkpoint(_published_file(tmp_path, original))
    assert not loaded.training
    assert loaded.gaussian_conditional.quantized_cdf.numel() > 0
    assert loaded.entropy_bottleneck_b2.quantized_cdf.numel() > 0
    _assert_identical(official.export_official_state_dict(loaded), official.export_official_state_dict(original))


def test_loaded_checkpoint_codes_a_photo_as_the_original_does(tmp_path):
    original = _perturbed_segpic(seed=2, **SMALL).eval()
    original.update()
    loaded = official.load_official_checkpoint(_published_file(tmp_path, original), **SMALL)
    assert weights_hash(loaded) == weights_hash(original)
    x = _photo(64)
    assert loaded.compress(x)["strings"] == original.compress(x)["strings"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["x_hat"], original(x)["x_hat"], rtol=0, atol=0)


def test_bare_state_dict_without_prefix_loads(tmp_path):
    original = _perturbed_segpic(seed=3, **SMALL)
    path = tmp_path / "bare.pth"
    torch.save(official.export_official_state_dict(original), path)
    loaded = official.load_official_checkpoint(path, **SMALL)
    assert weights_hash(loaded) == weights_hash(original)


def test_widths_are_read_from_the_file(tmp_path):
    original = _perturbed_segpic(seed=4, **SMALL)
    path = _published_file(tmp_path, original)
    for loaded in (official.load_official_checkpoint(path), load_codec(path)):
        assert (loaded.N, loaded.M) == (SMALL["N"], SMALL["M"])
        assert weights_hash(loaded) == weights_hash(original)
    with pytest.raises(ValueError, match=r"not a SegPIC\(N=48, M=40\) checkpoint: .*mis-shaped"):
        official.load_official_checkpoint(path, N=48)


def test_bottleneck_names_are_matched_by_exact_module_name():
    exported = official.export_official_state_dict(build_model("segpic", **SMALL))
    assert "entropy_bottleneck._matrix0" in exported
    assert "entropy_bottleneck_b._matrix0" in exported and "entropy_bottleneck_b2._factor3" in exported
    assert not [key for key in exported if ".matrices." in key or ".biases." in key or ".factors." in key]


def _edited_file(tmp_path, edit) -> str:
    state = official.export_official_state_dict(build_model("segpic", **SMALL))
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save({"state_dict": state}, path)
    return str(path)


def test_missing_key_is_named(tmp_path):
    path = _edited_file(tmp_path, lambda state: state.pop("entropy_bottleneck_b._bias4"))
    with pytest.raises(ValueError, match=r"1 missing key\(s\): entropy_bottleneck_b\._bias4"):
        official.load_official_checkpoint(path, **SMALL)


def test_unknown_key_is_named(tmp_path):
    path = _edited_file(tmp_path, lambda state: state.update({"dyn_extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"1 unknown key\(s\): dyn_extra\.weight"):
        official.load_official_checkpoint(path, **SMALL)


def test_mis_shaped_key_is_named(tmp_path):
    path = _edited_file(tmp_path, lambda state: state.update({"dyn_decoder.conv_out.bias": torch.zeros(5)}))
    with pytest.raises(ValueError, match=r"1 mis-shaped key\(s\): dyn_decoder\.conv_out\.bias \(file \(5,\)"):
        official.load_official_checkpoint(path, **SMALL)


def test_disagreeing_aliases_are_rejected(tmp_path):
    def edit(state):
        state["g_a1.0.conv_groups.0.bias"] = state["basic_E.0.conv_groups.0.bias"] + 1

    with pytest.raises(ValueError, match=r"g_a1\.0\.conv_groups\.0\.bias and basic_E\.0\.conv_groups\.0\.bias"):
        official.load_official_checkpoint(_edited_file(tmp_path, edit), **SMALL)


def test_files_that_are_not_state_dicts_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="garbage.pth: not a torch checkpoint"):
        official.load_official_checkpoint(garbage)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match="list.pth: expected a state dict"):
        official.load_official_checkpoint(listing)
    with pytest.raises(ValueError, match="no such checkpoint file"):
        official.load_official_checkpoint(tmp_path / "absent.pth")


class _Payload:
    """Any class outside torch's allow-list: unpickling it would run arbitrary code paths."""


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="pickled.pth: not a readable torch weights file"):
        official.load_official_checkpoint(path)


def test_a_tensor_under_both_compressai_names_is_rejected(tmp_path):
    def edit(state):
        state["entropy_bottleneck.matrices.0"] = state["entropy_bottleneck._matrix0"]

    with pytest.raises(ValueError, match=r"1 duplicated .*: entropy_bottleneck\._matrix0"):
        official.load_official_checkpoint(_edited_file(tmp_path, edit), **SMALL)
