"""Decode and validate one encoded image before it enters a shard.

The rule, applied in this order:
1. Bytes PIL cannot identify, or that fail to decode completely (truncated, corrupt),
   are rejected (`corrupt`).
2. Images with more than `max_pixels` pixels are rejected (`too-large`) from their
   header alone, before any decoding: a decompression bomb never gets allocated.
   Pillow's own bomb check (2 × `Image.MAX_IMAGE_PIXELS`, the default here) applies
   as well, so a larger `max_pixels` also needs that global raised.
3. Images whose shorter side is under `min_side` pixels are rejected (`too-small`):
   the codec downsamples by 64.
4. Modes every reader turns into RGB exactly with `convert("RGB")` (RGB, grayscale `L`,
   bilevel `1`, palette `P` without transparency) with no EXIF rotation keep their
   **original encoded bytes**.
5. Everything else is fixed and re-encoded losslessly as an RGB PNG, and the fix is
   named (the manifest records it): EXIF orientation is applied to the pixels
   (`exif-rotation`); CMYK and YCbCr/LAB are converted to RGB (`colour-mode`); 16-bit
   samples become 8-bit (`16-bit`: grayscale scaled by 255/65535, 48-bit RGB keeps the
   high byte as Pillow decodes it; 32-bit integer grayscale is read as 16-bit unless
   every value fits in 8 bits); floating-point samples become 8-bit (`float`: [0,1] data
   scaled by 255, data beyond 1 read as 0-255, beyond 255 as 0-65535); alpha is composited
   over white (`alpha`). Other exotic modes are rejected (`unsupported-mode`).

`read_image` applies the same rules to give the pixels themselves, grayscale kept as one
channel: what `segpic compress` and `segpic eval` code, and what ingest stores.
"""

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own bomb threshold (twice MAX_IMAGE_PIXELS)
DEFAULT_MIN_SIDE = 64
EXIF_ORIENTATION_TAG = 0x0112
KEPT_MODES = frozenset({"RGB", "L", "1"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
COLOUR_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV"})
WIDE_INTEGER_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
FLOAT_MODES = frozenset({"F"})
GRAY_ALPHA_MODES = frozenset({"LA", "La"})


@dataclass(frozen=True)
class ImageLimits:
    """What an image must satisfy to enter a shard."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.min_side <= 0:
            raise ValueError(f"image limits must be positive, got {self}")


class ImageRejected(ValueError):
    """An image that cannot enter a shard; `reason` is a short code for the manifest."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PreparedImage:
    """Bytes ready for the `image` column; `fixes` is empty when they are the original bytes."""

    data: bytes
    width: int
    height: int
    fixes: tuple[str, ...]


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open from the header only and apply the size limits before decoding any pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageRejected("too-large", str(error)) from error
    except Exception as error:  # Pillow's plugins raise assorted types on malformed headers
        raise ImageRejected("corrupt", f"not a readable image ({error})") from error
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected("too-large", f"{width}x{height} exceeds the {limits.max_pixels}-pixel limit")
    if min(width, height) < limits.min_side:
        raise ImageRejected("too-small", f"{width}x{height} has a side under {limits.min_side} pixels")
    return image


def _decode_fully(image: Image.Image) -> None:
    try:
        image.load()
    except Exception as error:  # truncated or damaged data surfaces as assorted types
        raise ImageRejected("corrupt", f"decoding failed ({error})") from error


def _has_16_bit_samples(image: Image.Image) -> bool:
    """True for files with 16-bit samples that Pillow reads as 8-bit modes (48-bit RGB PNG).

    Only visible in the decoder's raw mode (`RGB;16B`), which `load()` discards.
    """
    return any(";16" in str(tile.args) for tile in getattr(image, "tile", ()))


def _scaled_to_8_bits(pixels: np.ndarray, peak: float) -> Image.Image:
    scaled = np.clip(np.round(np.nan_to_num(pixels * (255 / peak))), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def _float_peak(pixels: np.ndarray) -> float:
    """Full scale of floating-point samples: 1 for [0,1] data, else 255, else 65535."""
    top = float(np.nanmax(pixels)) if pixels.size else 0.0
    return next(peak for peak in (1.0, 255.0, 65535.0) if top <= peak or peak == 65535.0)


def _to_8_bit(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Pixels as 8-bit "L" (grayscale sources) or "RGB", plus the names of the fixes that took;
    raises for exotic modes."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        composited = Image.alpha_composite(background, rgba).convert("RGB")
        return (composited.convert("L") if image.mode in GRAY_ALPHA_MODES else composited), ["alpha"]
    if image.mode in WIDE_INTEGER_MODES:
        pixels = np.asarray(image, dtype=np.int64)
        peak = 65535 if pixels.max() > 255 or image.mode != "I" else 255
        return _scaled_to_8_bits(pixels, peak), ["16-bit"]
    if image.mode in FLOAT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        return _scaled_to_8_bits(pixels, _float_peak(pixels)), ["float"]
    if image.mode in COLOUR_MODES:
        return image.convert("RGB"), ["colour-mode"]
    if image.mode in ("L", "1"):
        return image.convert("L"), []
    if image.mode in KEPT_MODES or image.mode == "P":
        return image.convert("RGB"), []
    raise ImageRejected("unsupported-mode", f"pixel mode {image.mode} has no lossless 8-bit RGB form")


def _is_rotated(image: Image.Image) -> bool:
    return image.getexif().get(EXIF_ORIENTATION_TAG, 1) not in (0, 1)


def _fixed_pixels(image: Image.Image, wide: bool) -> tuple[Image.Image, list[str]]:
    """8-bit "L"/"RGB" pixels upright, with every fix named (the image is decoded already)."""
    pixels, fixes = _to_8_bit(image)
    if wide and "16-bit" not in fixes:
        fixes.append("16-bit")
    if _is_rotated(image):
        pixels.info["exif"] = image.info.get("exif", b"")
        pixels = ImageOps.exif_transpose(pixels)
        fixes.append("exif-rotation")
    return pixels, fixes


def normalize_image(image: Image.Image) -> Image.Image:
    """An opened image's pixels by the rules above: 8-bit "L" for grayscale sources, else "RGB"."""
    wide = _has_16_bit_samples(image)
    _decode_fully(image)
    return _fixed_pixels(image, wide)[0]


def read_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The pixels ingest would store, as 8-bit "L" for grayscale sources, else "RGB".

    Raises ImageRejected for unreadable, corrupt, oversized or exotic images.
    """
    return normalize_image(_open(data, ImageLimits(max_pixels=max_pixels, min_side=1)))


def prepare_image(data: bytes, limits: ImageLimits = ImageLimits()) -> PreparedImage:
    """Validate encoded image bytes; keep them when readers need no fix, else re-encode as PNG."""
    image = _open(data, limits)
    wide = _has_16_bit_samples(image)
    _decode_fully(image)
    plain_palette = image.mode == "P" and "transparency" not in image.info
    if not _is_rotated(image) and not wide and (image.mode in KEPT_MODES or plain_palette):
        return PreparedImage(data, image.width, image.height, ())
    pixels, fixes = _fixed_pixels(image, wide)
    rgb = pixels.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return PreparedImage(buffer.getvalue(), rgb.width, rgb.height, tuple(fixes))
