"""`segpic compress` / `segpic decompress` through the real CLI, with a real checkpoint file."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from model.bitstream import CodecIdentity, SegpicFile, decode_file, tensor_to_image
from model.checkpoints import load_codec, save_codec, weights_hash
from model.official import export_official_state_dict, load_official_checkpoint
from model.segpic import SegPIC
from pipeline.cli import app
from pipeline.sample import sample_photo_paths

from random_codecs import random_segpic, random_wacnn

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = random_segpic(0)
    path = tmp_path_factory.mktemp("codec") / "tiny.pt"
    save_codec(path, model, "segpic", {"N": 24, "M": 40})
    return path


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "rocket.png"
    with Image.open(sample_photo_paths()[3]) as image:
        image.convert("RGB").crop((100, 50, 197, 120)).save(path)
    return path


def test_compress_then_decompress_writes_the_decoded_png(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    result = runner.invoke(app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded)])
    assert result.exit_code == 0, result.output
    assert "bpp" in result.output and " s" in result.output
    assert coded.read_bytes().startswith(b"SEGPIC") and coded.stat().st_size > 500

    decoded_png = tmp_path / "rocket-decoded.png"
    result = runner.invoke(app, ["decompress", str(coded), "-c", str(checkpoint), "-o", str(decoded_png)])
    assert result.exit_code == 0, result.output
    assert "bpp" in result.output
    with Image.open(decoded_png) as decoded:
        assert decoded.size == (97, 70) and decoded.mode == "RGB"
        pixels = np.asarray(decoded)
    model = load_codec(checkpoint)
    expected = tensor_to_image(decode_file(model, coded.read_bytes(), CodecIdentity.of(model)))
    assert np.array_equal(pixels, np.asarray(expected))


def test_corrupted_file_fails_with_one_line_and_exit_code_1(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    assert runner.invoke(app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded)]).exit_code == 0
    data = bytearray(coded.read_bytes())
    data[len(data) // 2] ^= 0xFF
    coded.write_bytes(bytes(data))
    result = runner.invoke(app, ["decompress", str(coded), "-c", str(checkpoint), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 1
    assert "corrupted" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.png").exists()


def test_file_from_another_checkpoint_is_refused(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    assert runner.invoke(app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded)]).exit_code == 0
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_codec(other, SegPIC(N=24, M=40), "segpic", {"N": 24, "M": 40})
    result = runner.invoke(app, ["decompress", str(coded), "-c", str(other), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 1
    assert "was written by segpic N=24 M=40" in result.output


def test_unreadable_image_is_a_clear_error(tmp_path, checkpoint):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    result = runner.invoke(app, ["compress", str(not_an_image), "-c", str(checkpoint), "-o", str(tmp_path / "x.segpic")])
    assert result.exit_code == 1
    assert "notes.png" in result.output and "cannot read the image" in result.output


def test_missing_checkpoint_is_a_clear_error(tmp_path, photo_png):
    missing = tmp_path / "absent.pt"
    result = runner.invoke(app, ["compress", str(photo_png), "-c", str(missing), "-o", str(tmp_path / "x.segpic")])
    assert result.exit_code == 1
    assert "absent.pt" in result.output and "Traceback" not in result.output


def test_compress_reports_the_whole_file_rate_and_the_mode(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    result = runner.invoke(app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded)])
    assert result.exit_code == 0, result.output
    whole_file_bpp = 8 * coded.stat().st_size / (97 * 70)
    assert f"{whole_file_bpp:.4f} bpp counting every byte of the file" in result.output
    assert "portable mode" in result.output


def test_published_compatible_flag_writes_and_decodes_that_mode(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    arguments = ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded), "--published-compatible"]
    assert runner.invoke(app, arguments).exit_code == 0
    assert SegpicFile.from_bytes(coded.read_bytes()).mode == "published-compatible"
    result = runner.invoke(app, ["decompress", str(coded), "-c", str(checkpoint), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    assert "published-compatible mode" in result.output


def test_decompress_refuses_a_file_over_the_pixel_limit_before_decoding(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    assert runner.invoke(app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded)]).exit_code == 0
    output = tmp_path / "out.png"
    result = runner.invoke(
        app, ["decompress", str(coded), "-c", str(checkpoint), "-o", str(output), "--max-pixels", "5000"]
    )
    assert result.exit_code == 1
    assert "image 97x70 exceeds the 5000-pixel limit" in result.output and "Traceback" not in result.output
    assert not output.exists()


def test_decompress_to_an_unknown_image_format_is_refused(tmp_path, checkpoint, photo_png):
    coded = tmp_path / "rocket.segpic"
    assert runner.invoke(app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(coded)]).exit_code == 0
    result = runner.invoke(app, ["decompress", str(coded), "-c", str(checkpoint), "-o", str(tmp_path / "out.xyz")])
    assert result.exit_code == 1 and "unknown image format '.xyz'" in result.output


def test_too_large_grid_is_refused(tmp_path, checkpoint, photo_png):
    result = runner.invoke(
        app, ["compress", str(photo_png), "-c", str(checkpoint), "-o", str(tmp_path / "x.segpic"), "--grid", "9"]
    )
    assert result.exit_code == 1 and "grid 9 is outside 1..8 for a 97x70 image" in result.output
    assert not (tmp_path / "x.segpic").exists()


def test_export_writes_the_published_layout(tmp_path, checkpoint):
    exported = tmp_path / "published.pth.tar"
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(exported)])
    assert result.exit_code == 0, result.output
    model = load_codec(checkpoint)
    published = load_official_checkpoint(exported)
    assert weights_hash(published) == weights_hash(model)
    stored = torch.load(exported, weights_only=True)["state_dict"]
    assert stored.keys() == export_official_state_dict(model).keys()
    assert "entropy_bottleneck._matrix0" in stored and "basic_E.0.conv_groups.0.weight" in stored


def test_export_refuses_an_architecture_without_a_published_layout(tmp_path):
    wacnn = tmp_path / "wacnn.pt"
    save_codec(wacnn, random_wacnn(0), "wacnn", {"N": 32, "M": 40})
    result = runner.invoke(app, ["export", str(wacnn), "-o", str(tmp_path / "out.pth")])
    assert result.exit_code == 1
    assert "wacnn checkpoint has no published layout" in result.output
    assert not (tmp_path / "out.pth").exists()


def test_export_of_a_missing_checkpoint_or_onto_itself_is_one_line(tmp_path, checkpoint):
    result = runner.invoke(app, ["export", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "out.pth")])
    assert result.exit_code == 1 and "absent.pt" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(checkpoint), "--overwrite"])
    assert result.exit_code == 1 and "refusing to overwrite the checkpoint being exported" in result.output
