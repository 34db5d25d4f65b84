"""The fast decoders give exactly Pillow's pixels, and take the formats they are meant to take."""

import io

import numpy as np
import pytest
from PIL import Image

from model.training.decoding import _fast_image, decode_image
from pipeline.label_map_format import decode_label_map
from pipeline.sample import sample_photo_paths


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def textured(height: int, width: int, mode: str = "RGB") -> Image.Image:
    """A photo-like mix of smooth gradients and noise, so every DCT block and filter type gets work."""
    ys, xs = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(height * width).integers(0, 64, (height, width, 3))
    pixels = np.stack([xs * 3, ys * 2, xs + ys], axis=-1) % 192 + noise
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


@pytest.mark.parametrize("path", sample_photo_paths(), ids=lambda path: path.name)
def test_sample_photos_decode_exactly_as_pillow_through_the_fast_path(path):
    data = path.read_bytes()
    assert _fast_image(data) is not None
    assert np.array_equal(decode_image(data, path.stem), pillow_rgb(data))


FAST_VARIANTS = {
    "jpeg 4:4:4": (textured(61, 83), "JPEG", {"quality": 90, "subsampling": 0}),
    "jpeg 4:2:2": (textured(61, 83), "JPEG", {"quality": 75, "subsampling": 1}),
    "jpeg 4:2:0": (textured(61, 83), "JPEG", {"quality": 50, "subsampling": 2}),
    "jpeg progressive": (textured(64, 97), "JPEG", {"quality": 85, "progressive": True}),
    "jpeg grayscale": (textured(45, 30, "L"), "JPEG", {"quality": 80}),
    "png interlaced": (textured(33, 47), "PNG", {"interlace": 1}),
    "png grayscale": (textured(33, 47, "L"), "PNG", {}),
}
PILLOW_VARIANTS = {
    "jpeg cmyk": (textured(40, 40, "CMYK"), "JPEG", {"quality": 90}),
    "png palette": (textured(40, 40, "P"), "PNG", {}),
    "png 16-bit": (Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 37).astype(np.uint16)), "PNG", {}),
}


@pytest.mark.parametrize("variant", FAST_VARIANTS)
def test_fast_path_matches_pillow_on_every_jpeg_and_png_layout_it_takes(variant):
    image, format, options = FAST_VARIANTS[variant]
    data = encoded(image, format, **options)
    assert _fast_image(data) is not None
    assert np.array_equal(decode_image(data, variant), pillow_rgb(data))


@pytest.mark.parametrize("variant", PILLOW_VARIANTS)
def test_other_layouts_go_through_pillow(variant):
    image, format, options = PILLOW_VARIANTS[variant]
    data = encoded(image, format, **options)
    assert _fast_image(data) is None
    decoded = decode_image(data, variant)
    assert decoded.shape == (40, 40, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, pillow_rgb(data))


def test_what_pillow_tolerates_still_decodes_as_pillow_decodes_it():
    data = encoded(textured(64, 64), "JPEG", quality=90)
    stray = data[:-2] + b"\x12\x34\x56" + data[-2:]  # "extraneous bytes before marker": a libjpeg warning
    assert _fast_image(stray) is None
    assert np.array_equal(decode_image(stray, "r"), pillow_rgb(stray))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_maps_keep_their_ids_and_depth(dtype):
    ids = (np.arange(50 * 70).reshape(50, 70) * 13 % (300 if dtype == np.uint16 else 256)).astype(dtype)
    decoded = decode_label_map(encoded(Image.fromarray(ids), "PNG"), "r")
    assert decoded.dtype == dtype
    assert np.array_equal(decoded, ids)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_files_name_the_record(format):
    data = encoded(textured(64, 64), format, **({"quality": 90} if format == "JPEG" else {}))
    with pytest.raises(ValueError, match="record-3"):
        decode_image(data[: len(data) // 2], "record-3")


@pytest.mark.parametrize("decode", [decode_image, decode_label_map])
def test_a_damaged_png_fails_as_in_pillow_instead_of_decoding_wrong_pixels(decode):
    pixels = textured(64, 64, "L") if decode is decode_label_map else textured(64, 64)
    damaged = bytearray(encoded(pixels, "PNG"))
    damaged[len(damaged) // 2] ^= 0xFF  # inside the image data: its chunk CRC no longer matches
    with pytest.raises(ValueError, match="record-5.*cannot be decoded"):
        decode(bytes(damaged), "record-5")


def test_truncated_label_map_names_the_record():
    data = encoded(Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)), "PNG")
    with pytest.raises(ValueError, match="record-4"):
        decode_label_map(data[: len(data) // 2], "record-4")
