"""Stored image and label-map bytes -> pixels, with the same result Pillow gives, faster.

Decoding is most of what a training loader spends its time on once images stop fitting
in memory. For the common stored forms, 8-bit grayscale/RGB PNG and YCbCr/grayscale
JPEG, libspng (`pyspng`) and libjpeg-turbo's TurboJPEG API (`simplejpeg`, accurate DCT
and upsampling as Pillow uses them) decode the same pixels in less time. Anything else
(palettes, 16-bit, CMYK, RGB-coded JPEG, files a fast decoder complains about) goes
through Pillow, as everywhere else in the project, so pixels and failures never depend
on which path ran.
"""

import io
import struct
import zlib

import numpy as np
import pyspng
import simplejpeg
from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAY, PNG_RGB = 0, 2
FAST_PNG_IMAGES = ((8, PNG_GRAY), (8, PNG_RGB))
FAST_PNG_LABEL_MAPS = ((8, PNG_GRAY),)
"""(bit depth, colour type) of the PNGs the fast path takes, as images and as label maps."""
FAST_JPEG_COLOURSPACES = ("YCbCr", "Gray")


def _png_layout(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for anything that is not a PNG."""
    if len(data) < 26 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _png_chunks_intact(data: bytes) -> bool:
    """True when every chunk's CRC matches, as Pillow checks.

    libspng, as `pyspng` drives it, does not check, and would decode a damaged file into
    wrong pixels instead of failing.
    """
    position, view = len(PNG_SIGNATURE), memoryview(data)
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        end = position + 8 + length
        if end + 4 > len(data) or zlib.crc32(view[position + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if data[position + 4 : position + 8] == b"IEND":
            return True
        position = end + 4
    return False


def _with_pillow(data: bytes, record: str, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{what} of {record} cannot be decoded: {error}") from error
    return image


def _fast_png(data: bytes, layouts: tuple[tuple[int, int], ...], pixel_format: str) -> np.ndarray | None:
    """libspng's pixels for an intact PNG of one of `layouts`, else None (Pillow decides)."""
    if _png_layout(data) not in layouts or not _png_chunks_intact(data):
        return None
    try:
        return pyspng.load(data, pixel_format)
    except RuntimeError:
        return None


def _fast_image(data: bytes) -> np.ndarray | None:
    """Pixels from a fast decoder when the format is one it reproduces exactly, else None.

    Any complaint from a fast decoder (even a recoverable one, like stray bytes before a
    JPEG marker, which Pillow tolerates) also gives None: Pillow then decides, so a file
    decodes, or fails with its message, exactly as it did when it was ingested.
    """
    if _png_layout(data) is not None:
        return _fast_png(data, FAST_PNG_IMAGES, "RGB")
    try:
        if simplejpeg.is_jpeg(data) and simplejpeg.decode_jpeg_header(data)[2] in FAST_JPEG_COLOURSPACES:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        pass
    return None


def decode_image(data: bytes, record: str) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB (grayscale and palette images expanded)."""
    pixels = _fast_image(data)
    if pixels is not None:
        return pixels
    image = _with_pillow(data, record, "image")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def decode_label_map(data: bytes, record: str) -> np.ndarray:
    """PNG label map bytes -> (H, W) integer array whose values are region ids (8- or 16-bit as stored)."""
    labels = _fast_png(data, FAST_PNG_LABEL_MAPS, "L")
    if labels is not None:
        return labels
    labels = np.asarray(_with_pillow(data, record, "label map"))
    if labels.ndim != 2:
        raise ValueError(f"label map of {record} is not a single-channel image (shape {labels.shape})")
    if labels.dtype in (np.uint8, np.uint16):
        return labels
    if labels.dtype.kind not in "ui" or labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"label map of {record} does not hold 8- or 16-bit region ids ({labels.dtype})")
    return labels.astype(np.uint16)
