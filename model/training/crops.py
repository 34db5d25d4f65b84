"""Pixel plumbing of the training samples after decoding: resize up, crop, flip, relabel.

These are numpy/OpenCV functions on uint8 images and integer label maps. Everything
stays in the stored integer types until the crop is cut, so only crop-sized arrays are
ever converted to float.
"""

from dataclasses import dataclass

import cv2
import numpy as np

cv2.setNumThreads(1)


def resize_up(image: np.ndarray, label_map: np.ndarray | None, crop: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale so the short side is at least `crop` (bilinear image, nearest labels); larger inputs pass through."""
    height, width = image.shape[:2]
    if min(height, width) >= crop:
        return image, label_map
    scale = crop / min(height, width)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label_map is not None:
        label_map = cv2.resize(label_map, size, interpolation=cv2.INTER_NEAREST)
    return image, label_map


@dataclass(frozen=True)
class CropWindow:
    """Where a crop sits and how it is flipped; drawn once, applied to image and label map alike."""

    top: int
    left: int
    size: int
    flip_horizontal: bool = False
    flip_vertical: bool = False

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        cut = pixels[self.top : self.top + self.size, self.left : self.left + self.size]
        if self.flip_horizontal:
            cut = cut[:, ::-1]
        if self.flip_vertical:
            cut = cut[::-1]
        return np.ascontiguousarray(cut)


def random_window(height: int, width: int, size: int, rng: np.random.Generator) -> CropWindow:
    """Uniform crop position and independent horizontal/vertical flips (the published augmentation)."""
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    flips = rng.random(2) < 0.5
    return CropWindow(top, left, size, bool(flips[0]), bool(flips[1]))


def centre_window(height: int, width: int, size: int) -> CropWindow:
    """Deterministic centre crop for validation."""
    return CropWindow((height - size) // 2, (width - size) // 2, size)


def relabel(label_map: np.ndarray) -> np.ndarray:
    """Region ids of a crop renumbered 0..n-1 in sorted order of the original ids (`docs/architecture.md` §5), as int64.

    Masked average pooling allots max(id)+1 prototypes per image, so ids of regions
    outside the crop would cost prototypes (and bits) for nothing. Stored ids are 8- or
    16-bit, so a lookup table over present ids does what `np.unique(return_inverse=True)`
    does in linear time instead of a sort.
    """
    present = np.zeros(int(label_map.max()) + 1, dtype=np.int64)
    present[label_map] = 1
    return (np.cumsum(present) - 1)[label_map]
