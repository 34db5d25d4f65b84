"""Image files as bytes for the ingest and image-loader tests: any PIL image in any format, and a rotated JPEG."""

import io

import numpy as np
from PIL import Image

PIXELS = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    return encode(Image.fromarray(PIXELS), "JPEG", exif=exif.tobytes(), quality=95)
