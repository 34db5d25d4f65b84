"""One image loader: compress, eval and ingest see the same 8-bit pixels for awkward files
(16-bit, float, EXIF-rotated, alpha, palette transparency), grayscale kept as one channel."""

import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from model.bitstream import load_image_file
from model.checkpoints import save_codec
from model.evaluation.images import collect_images
from pipeline.cli import app
from pipeline.images import prepare_image

from random_codecs import random_segpic
from encoded_images import encode as encoded
from encoded_images import rotated_jpeg

RNG = np.random.default_rng(3)
PIXELS = RNG.integers(0, 256, (70, 90, 3), dtype=np.uint8)
GRAY = PIXELS[..., 0]


def palette_with_transparency() -> bytes:
    image = Image.fromarray(PIXELS).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 3
    return encoded(image, "PNG", transparency=3)


ALPHA = RNG.integers(0, 256, (70, 90), dtype=np.uint8)
FILES = {
    "gray16.png": (lambda: encoded(Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG"), GRAY),
    "float01.tif": (lambda: encoded(Image.fromarray(GRAY.astype(np.float32) / 255, "F"), "TIFF"), GRAY),
    "float255.tif": (lambda: encoded(Image.fromarray(GRAY.astype(np.float32), "F"), "TIFF"), GRAY),
    "rgba.png": (
        lambda: encoded(Image.fromarray(np.dstack([PIXELS, ALPHA])), "PNG"),
        np.round(PIXELS * (ALPHA[..., None] / 255) + 255 * (1 - ALPHA[..., None] / 255)),
    ),
    "graya.png": (lambda: encoded(Image.fromarray(np.dstack([GRAY, ALPHA]), "LA"), "PNG"), None),
    "rotated.jpg": (rotated_jpeg, None),
    "palette-transparent.png": (palette_with_transparency, None),
    "plain.png": (lambda: encoded(Image.fromarray(PIXELS), "PNG"), PIXELS),
}


def ingest_pixels(data: bytes) -> np.ndarray:
    """What ingest stores for these bytes, decoded as RGB."""
    with Image.open(io.BytesIO(prepare_image(data).data)) as stored:
        return np.asarray(stored.convert("RGB"))


def as_8_bit(tensor) -> np.ndarray:
    return np.round(tensor[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    for name, (make, _) in FILES.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.mark.parametrize("name", FILES)
def test_compress_and_eval_see_the_pixels_ingest_stores(folder, name):
    path = folder / name
    loaded = as_8_bit(load_image_file(path))
    stored = ingest_pixels(path.read_bytes())
    gray = name.startswith(("gray", "float"))
    assert loaded.shape[2] == (1 if gray else 3)
    assert np.array_equal(np.broadcast_to(loaded, stored.shape), stored)
    expected = FILES[name][1]
    if expected is not None:
        assert np.array_equal(loaded, np.asarray(expected, dtype=np.uint8).reshape(loaded.shape))
    evaluated = next(image for image in collect_images(folder) if image.name == path.stem)
    assert np.array_equal(as_8_bit(evaluated.tensor()), loaded)


def test_exif_rotation_is_applied(folder):
    loaded = as_8_bit(load_image_file(folder / "rotated.jpg"))
    assert loaded.shape == (128, 96, 3)
    with Image.open(io.BytesIO(rotated_jpeg())) as raw:
        unrotated = np.asarray(raw.convert("RGB"))
    assert np.array_equal(loaded, np.rot90(unrotated, k=-1))


def test_float_images_are_ingested_with_the_fix_named(folder):
    prepared = prepare_image((folder / "float01.tif").read_bytes())
    assert prepared.fixes == ("float",)


def test_unreadable_and_exotic_images_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png: cannot read the image"):
        load_image_file(junk)
    with pytest.raises(ValueError, match="absent.png: cannot read the image"):
        load_image_file(tmp_path / "absent.png")
    big_endian = tmp_path / "odd.tif"
    big_endian.write_bytes(encoded(Image.new("I;16B", (64, 64), 65535), "TIFF"))
    assert load_image_file(big_endian).min() == 1  # big-endian 16-bit: full scale is white


def test_cli_codes_a_16_bit_png_exactly_as_its_8_bit_twin(tmp_path, folder):
    """The same pixels give the same file: 16-bit input is no longer coded as solid white."""
    checkpoint = tmp_path / "tiny.pt"
    save_codec(checkpoint, random_segpic(0), "segpic", {"N": 24, "M": 40})
    twin = tmp_path / "gray8.png"
    Image.fromarray(GRAY).save(twin)
    outputs = []
    for source in (folder / "gray16.png", twin):
        output = tmp_path / f"{source.stem}.segpic"
        result = CliRunner().invoke(app, ["compress", str(source), "-c", str(checkpoint), "-o", str(output)])
        assert result.exit_code == 0, result.output
        assert "counting every byte of the file" in result.output
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1]
