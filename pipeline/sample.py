"""The offline `sample` image set: real photographs that ship inside scikit-image.

Every stage needs data that exists without a download, so tests and the default
`dvc repro` run on these files, read straight from the installed package.
"""

from pathlib import Path

import skimage.data

# Colour photographs plus two grayscale ones, so the grayscale path is exercised too.
SAMPLE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "camera.png",
    "moon.png",
)


def sample_directory() -> Path:
    """Folder of the installed scikit-image data files."""
    return Path(skimage.data.__file__).parent


def sample_photo_paths() -> list[Path]:
    """Paths of the sample photographs, in a fixed order; raises if the install lacks one."""
    folder = sample_directory()
    paths = [folder / name for name in SAMPLE_PHOTOS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-image is missing sample photographs: {', '.join(missing)}")
    return paths
