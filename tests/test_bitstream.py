"""`.segpic` files: real photos of odd sizes and grayscale round-trip; damaged or foreign files fail cleanly."""

import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from model import bitstream
from model.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    CodecIdentity,
    ModelMismatchError,
    SegpicFile,
    SegpicFileError,
    decode_file,
    encode_image,
    image_to_tensor,
    pad_to_multiple,
    tensor_to_image,
)
from model.segpic import SegPIC
from pipeline.sample import sample_photo_paths

from random_codecs import random_segpic


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_codec(seed: int) -> SegPIC:
    model = random_segpic(seed).eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def codec() -> tuple[SegPIC, CodecIdentity]:
    model = tiny_codec(0)
    return model, CodecIdentity.of(model)


def sample_crop(name: str, width: int, height: int) -> Image.Image:
    path = next(path for path in sample_photo_paths() if path.name == name)
    with Image.open(path) as image:
        return image.crop((10, 20, 10 + width, 20 + height))


@pytest.fixture(scope="module")
def coded_photo(codec) -> bytes:
    model, identity = codec
    return encode_image(model, sample_crop("coffee.png", 90, 70), identity, grid=3)


def test_odd_sized_colour_photo_round_trips_to_its_size(codec, coded_photo):
    model, identity = codec
    image = sample_crop("coffee.png", 90, 70)
    padded = pad_to_multiple(image_to_tensor(image))
    assert padded.shape == (1, 3, 128, 128)
    with torch.no_grad():
        expected = model(padded, grid=3)["x_hat"][..., :70, :90].clamp(0, 1)
    # Published-compatible mode reproduces the eval-mode reconstruction of the padded image, cropped.
    published = encode_image(model, image, identity, grid=3, portable=False)
    assert torch.equal(decode_file(model, published, identity), expected)
    # Portable mode computes the entropy model in float64: the same picture up to float32 rounding.
    decoded = decode_file(model, coded_photo, identity)
    assert decoded.shape == (1, 3, 70, 90)
    assert torch.allclose(decoded, expected, atol=1e-5) and not torch.equal(decoded, expected)


def test_header_records_identity_size_grid_and_streams(codec, coded_photo):
    _, identity = codec
    parsed = SegpicFile.from_bytes(coded_photo)
    assert parsed.identity == identity
    assert (parsed.height, parsed.width, parsed.channels, parsed.grid) == (70, 90, 3, 3)
    assert parsed.portable and parsed.mode == "portable" and parsed.symbol_checksum is not None
    assert len(parsed.streams) == 4 and len(parsed.streams[0]) > 300
    stream_bits = 8 * sum(len(stream) for stream in parsed.streams)
    assert parsed.bits_per_pixel == pytest.approx(stream_bits / (70 * 90))
    assert parsed.to_bytes() == coded_photo


def test_grayscale_photo_decodes_to_one_channel(codec):
    model, identity = codec
    image = sample_crop("camera.png", 65, 64)
    assert image.mode == "L"
    decoded = decode_file(model, encode_image(model, image, identity), identity)
    assert decoded.shape == (1, 1, 64, 65)
    restored = tensor_to_image(decoded)
    assert restored.mode == "L" and restored.size == (65, 64)


def test_padding_replicates_the_last_row_and_column():
    x = image_to_tensor(sample_crop("astronaut.png", 70, 65))
    padded = pad_to_multiple(x)
    assert padded.shape == (1, 3, 128, 128)
    assert torch.equal(padded[..., :65, :70], x)
    assert torch.equal(padded[..., 100, :70], x[..., 64, :])
    assert torch.equal(padded[..., :65, 127], x[..., :, 69])


@pytest.mark.parametrize("cut", [0, 3, 7, 20, 40, -40, -5, -1])
def test_truncated_file_is_a_clear_error(codec, coded_photo, cut):
    model, identity = codec
    with pytest.raises(SegpicFileError, match="truncated|not a .segpic"):
        decode_file(model, coded_photo[:cut], identity, source="photo.segpic")


@pytest.mark.parametrize("position", [6, 9, 30, 60, 120, 200, -10, -2])
def test_flipped_byte_is_a_clear_error(codec, coded_photo, position):
    model, identity = codec
    damaged = bytearray(coded_photo)
    damaged[position] ^= 0x40
    with pytest.raises(SegpicFileError, match="photo.segpic"):
        decode_file(model, bytes(damaged), identity, source="photo.segpic")


def test_file_of_another_model_names_both_models(codec, coded_photo):
    other = tiny_codec(1)
    other_identity = CodecIdentity.of(other)
    with pytest.raises(ModelMismatchError) as raised:
        decode_file(other, coded_photo, other_identity, source="photo.segpic")
    message = str(raised.value)
    assert codec[1].weights_hash[:16] in message and other_identity.weights_hash[:16] in message


def test_unknown_format_version_is_refused(codec, coded_photo):
    model, identity = codec
    body = bytearray(coded_photo[:-4])
    body[len(MAGIC)] = FORMAT_VERSION + 1
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(SegpicFileError, match="version"):
        decode_file(model, forged, identity)


def test_other_file_types_are_refused(codec):
    model, identity = codec
    png = sample_photo_paths()[0].read_bytes()
    with pytest.raises(SegpicFileError, match="not a .segpic"):
        decode_file(model, png, identity)


def test_tensor_input_must_be_one_image(codec):
    model, identity = codec
    with pytest.raises(ValueError, match="one image"):
        encode_image(model, torch.rand(2, 3, 64, 64), identity)


def test_eight_bit_conversion_round_trips_pixels():
    image = sample_crop("chelsea.png", 33, 17)
    assert np.array_equal(np.asarray(tensor_to_image(image_to_tensor(image))), np.asarray(image.convert("RGB")))


def test_stream_count_must_match_the_architecture(codec, coded_photo):
    model, identity = codec
    parsed = SegpicFile.from_bytes(coded_photo)
    forged = dataclasses.replace(parsed, streams=parsed.streams[:2])
    with pytest.raises(SegpicFileError, match="2 streams, but segpic writes 4"):
        decode_file(model, forged.to_bytes(), identity)


def test_huge_size_claims_are_refused_before_any_allocation(codec, coded_photo):
    model, identity = codec
    parsed = SegpicFile.from_bytes(coded_photo)
    huge = dataclasses.replace(parsed, height=32768, width=32768)
    with pytest.raises(SegpicFileError, match="32768x32768 exceeds the 33554432-pixel limit"):
        decode_file(model, huge.to_bytes(), identity, source="huge.segpic")
    # With the pixel limit lifted, a y stream of 100 bytes is still too short for 167772160 symbols.
    short = dataclasses.replace(huge, streams=(parsed.streams[0][:100], *parsed.streams[1:]))
    with pytest.raises(SegpicFileError, match="the y stream has 100 bytes, too few for the 167772160 symbols"):
        decode_file(model, short.to_bytes(), identity, source="huge.segpic", max_pixels=1 << 30)


def test_a_size_whose_decode_would_not_fit_in_free_memory_is_refused(codec, coded_photo, monkeypatch):
    model, identity = codec
    monkeypatch.setattr(bitstream, "available_memory", lambda device: 100 << 20)
    parsed = SegpicFile.from_bytes(coded_photo)
    large = dataclasses.replace(parsed, height=3000, width=4000).to_bytes()
    with pytest.raises(SegpicFileError, match=r"decoding a 4000x3000 image needs about 2\.2 GiB of memory, 0\.1 GiB"):
        decode_file(model, large, identity, source="large.segpic")
    assert decode_file(model, coded_photo, identity).shape == (1, 3, 70, 90)  # small images still decode
