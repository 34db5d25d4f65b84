"""The installable project: the CLI answers and the offline sample set holds real photographs."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.sample import SAMPLE_PHOTOS, sample_photo_paths

runner = CliRunner()


def test_help_lists_version_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "version" in result.output


def test_version_reports_installed_packages():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].startswith("segpic 0.")
    assert any(line.startswith("compressai 1.2.8") for line in result.output.splitlines())


def test_sample_photos_are_real_decodable_images():
    paths = sample_photo_paths()
    assert [path.name for path in paths] == list(SAMPLE_PHOTOS)
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image)
        assert min(pixels.shape[:2]) >= 256, path
        assert pixels.std() > 10, f"{path} looks blank"
