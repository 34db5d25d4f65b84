"""PNG bytes -> pixels through libspng where it gives exactly Pillow's pixels, else through Pillow.

Shared by the two stored picture formats that training reads in bulk: images
(`model.training.decoding`) and label maps (`pipeline.label_map_format`). libspng
(`pyspng`) decodes the common layouts faster than Pillow; anything else, and any file a
fast decoder complains about, goes through Pillow, so pixels and failures never depend
on which path ran.
"""

import io
import struct
import zlib

import numpy as np
import pyspng
from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAY, PNG_RGB = 0, 2


def png_layout(data: bytes) -> tuple[int, int] | None:
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


def fast_png(data: bytes, layouts: tuple[tuple[int, int], ...], pixel_format: str) -> np.ndarray | None:
    """libspng's pixels for an intact PNG of one of `layouts`, else None (Pillow decides)."""
    if png_layout(data) not in layouts or not _png_chunks_intact(data):
        return None
    try:
        return pyspng.load(data, pixel_format)
    except RuntimeError:
        return None


def open_with_pillow(data: bytes, record: str, what: str) -> Image.Image:
    """The decoded Pillow image; raises ValueError naming `what` of `record` when it cannot be decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{what} of {record} cannot be decoded: {error}") from error
    return image
