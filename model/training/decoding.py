"""Stored image bytes -> pixels, with the same result Pillow gives, faster.

Decoding is most of what a training loader spends its time on once images stop fitting
in memory. For the common stored forms, 8-bit grayscale/RGB PNG and YCbCr/grayscale
JPEG, libspng (`pyspng`) and libjpeg-turbo's TurboJPEG API (`simplejpeg`, accurate DCT
and upsampling as Pillow uses them) decode the same pixels in less time. Anything else
(palettes, 16-bit, CMYK, RGB-coded JPEG, files a fast decoder complains about) goes
through Pillow, as everywhere else in the project, so pixels and failures never depend
on which path ran. Label maps have their own decoder beside their encoder
(`pipeline.label_map_format`), on the same PNG path (`pipeline.fast_png`).
"""

import numpy as np
import simplejpeg

from pipeline.fast_png import PNG_GRAY, PNG_RGB, fast_png, open_with_pillow, png_layout

FAST_PNG_IMAGES = ((8, PNG_GRAY), (8, PNG_RGB))
"""(bit depth, colour type) of the PNG images the fast path takes."""
FAST_JPEG_COLOURSPACES = ("YCbCr", "Gray")


def _fast_image(data: bytes) -> np.ndarray | None:
    """Pixels from a fast decoder when the format is one it reproduces exactly, else None.

    Any complaint from a fast decoder (even a recoverable one, like stray bytes before a
    JPEG marker, which Pillow tolerates) also gives None: Pillow then decides, so a file
    decodes, or fails with its message, exactly as it did when it was ingested.
    """
    if png_layout(data) is not None:
        return fast_png(data, FAST_PNG_IMAGES, "RGB")
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
    image = open_with_pillow(data, record, "image")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
