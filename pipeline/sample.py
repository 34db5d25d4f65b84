"""The offline image sets: real photographs that ship inside installed packages.

Every stage needs data that exists without a download, so tests and the default
`dvc repro` run on these files, read straight from the installed packages.
- `sample`: ten photographs of scikit-image, what the default study trains on;
- `sample-eval`: nine other photographs, of scikit-image and matplotlib, that no
  model of the default study trains on: what it is evaluated on.
"""

from pathlib import Path

import matplotlib
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

# (package, file): a portrait, coins, a clock, cells under a microscope, three textures,
# handwriting and a printed page; none of them in SAMPLE_PHOTOS. (scikit-image's retina.jpg
# is left out: at 1411² it would take as long to code as the other nine together.)
EVALUATION_PHOTOS: tuple[tuple[str, str], ...] = (
    ("matplotlib", "grace_hopper.jpg"),
    ("skimage", "coins.png"),
    ("skimage", "clock_motion.png"),
    ("skimage", "cell.png"),
    ("skimage", "brick.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "text.png"),
    ("skimage", "page.png"),
)


def sample_directory() -> Path:
    """Folder of the installed scikit-image data files."""
    return Path(skimage.data.__file__).parent


def _package_folders() -> dict[str, Path]:
    return {
        "skimage": sample_directory(),
        "matplotlib": Path(matplotlib.get_data_path()) / "sample_data",
    }


def _existing(paths: list[Path]) -> list[Path]:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the installed packages lack sample photographs: {', '.join(missing)}")
    return paths


def sample_photo_paths() -> list[Path]:
    """Paths of the `sample` photographs, in a fixed order; raises if the install lacks one."""
    return _existing([sample_directory() / name for name in SAMPLE_PHOTOS])


def evaluation_photo_paths() -> list[Path]:
    """Paths of the `sample-eval` photographs, in a fixed order; raises if the install lacks one."""
    folders = _package_folders()
    return _existing([folders[package] / name for package, name in EVALUATION_PHOTOS])
