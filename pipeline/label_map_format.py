"""How a label map is stored, encoder and decoder together: a lossless grayscale PNG.

Version 1 (`LABEL_MAP_FORMAT_VERSION`): region ids 0..n-1, one per pixel, as an 8-bit
grayscale PNG when every id fits in a byte (n <= 256), else a 16-bit one; more than
65536 regions cannot be stored. Mask shards hold these bytes in their `mask` column and
record the version in their schema metadata's `segpic` entry (`pipeline.shards`), so a
reader can refuse a layout it does not know. Decoding takes libspng's path for the 8-bit
form (`pipeline.fast_png`), Pillow for the rest, with the same result.
"""

import io

import numpy as np
from PIL import Image

from pipeline.fast_png import PNG_GRAY, fast_png, open_with_pillow

LABEL_MAP_FORMAT_VERSION = 1
MAX_8BIT_REGIONS = 256
MAX_16BIT_REGIONS = 65536
FAST_PNG_LABEL_MAPS = ((8, PNG_GRAY),)
"""(bit depth, colour type) of the label-map PNGs the fast path takes."""


def encode_label_map(label_map: np.ndarray) -> bytes:
    """Lossless PNG: 8-bit where ids fit in a byte, else 16-bit; raises past 65536 regions."""
    top = int(label_map.max()) if label_map.size else 0
    if top >= MAX_16BIT_REGIONS:
        raise ValueError(f"label map has ids up to {top}, more than a 16-bit PNG holds")
    dtype = np.uint8 if top < MAX_8BIT_REGIONS else np.uint16
    buffer = io.BytesIO()
    Image.fromarray(label_map.astype(dtype)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def decode_label_map(data: bytes, record: str) -> np.ndarray:
    """PNG label map bytes -> (H, W) integer array whose values are region ids (8- or 16-bit as stored)."""
    labels = fast_png(data, FAST_PNG_LABEL_MAPS, "L")
    if labels is not None:
        return labels
    labels = np.asarray(open_with_pillow(data, record, "label map"))
    if labels.ndim != 2:
        raise ValueError(f"label map of {record} is not a single-channel image (shape {labels.shape})")
    if labels.dtype in (np.uint8, np.uint16):
        return labels
    if labels.dtype.kind not in "ui" or labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"label map of {record} does not hold 8- or 16-bit region ids ({labels.dtype})")
    return labels.astype(np.uint16)
