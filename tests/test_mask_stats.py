"""Mask statistics: per-source summaries read from real mask shards."""

import io
import json
import math

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.mask_stats import write_mask_stats
from pipeline.masks import MasksConfig, make_masks
from pipeline.shards import MASK_SCHEMA, ShardWriter, list_shards, shard_name


def write_mask_shard(directory, rows):
    directory.mkdir(parents=True)
    with ShardWriter(directory / shard_name(0, 1), MASK_SCHEMA) as writer:
        for index, (num_regions, coverage, mean_iou) in enumerate(rows):
            buffer = io.BytesIO()
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
            writer.write({"id": str(index), "mask": {"bytes": buffer.getvalue(), "path": None},
                          "num_regions": num_regions, "coverage": coverage, "mean_iou": mean_iou,
                          "generator": directory.name, "settings_hash": "0"})


def test_summary_per_source_with_missing_iou_as_null(tmp_path):
    write_mask_shard(tmp_path / "sam", [(10, 0.5, 0.75), (30, 1.0, 0.25)])
    write_mask_shard(tmp_path / "grid", [(16, 1.0, math.nan), (16, 1.0, math.nan)])
    write_mask_stats([tmp_path / "sam", tmp_path / "grid"], tmp_path / "out" / "stats.json")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["sam"]["regions_mean"] == 20 and stats["sam"]["regions_max"] == 30
    assert stats["sam"]["coverage_mean"] == 0.75 and stats["sam"]["mean_iou"] == 0.5
    assert stats["grid"]["mean_iou"] is None
    table = (tmp_path / "out" / "stats.md").read_text()
    assert "| sam | sam | 2 | 0 | 0 | 20.0 |" in table and "n/a" in table


def test_failed_images_are_counted_apart_and_left_out_of_the_averages(tmp_path):
    write_mask_shard(tmp_path / "sam", [(10, 0.5, 0.75), (0, 0.0, math.nan), (30, 1.0, 0.25)])
    stats = write_mask_stats([tmp_path / "sam"], tmp_path / "stats.json").stats[0]
    assert (stats.images, stats.failed, stats.regions_mean, stats.regions_median) == (3, 1, 20.0, 20.0)
    assert (stats.coverage_mean, stats.mean_iou) == (0.75, 0.5)
    write_mask_shard(tmp_path / "broken", [(0, 0.0, math.nan)])
    write_mask_stats([tmp_path / "broken"], tmp_path / "only_failures.json")
    assert json.loads((tmp_path / "only_failures.json").read_text())["broken"] == {
        "source": "broken", "generator": "broken", "images": 1, "failed": 1, "no_mask": 0, "regions_mean": None,
        "regions_median": None, "regions_max": None, "coverage_mean": None, "mean_iou": None,
    }


def test_sources_with_the_same_folder_name_are_keyed_by_path(tmp_path):
    write_mask_shard(tmp_path / "coco" / "sam", [(10, 0.5, 0.75)])
    write_mask_shard(tmp_path / "sun" / "sam", [(40, 1.0, 0.5)])
    write_mask_shard(tmp_path / "grid", [(16, 1.0, math.nan)])
    write_mask_stats([tmp_path / "coco" / "sam", tmp_path / "sun" / "sam", tmp_path / "grid"], tmp_path / "stats.json")
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert sorted(stats) == ["coco/sam", "grid", "sun/sam"]
    assert stats["coco/sam"]["regions_mean"] == 10 and stats["sun/sam"]["regions_mean"] == 40


def test_an_image_folder_or_a_damaged_shard_is_one_line(tmp_path, sample_image_shards):
    result = CliRunner().invoke(app, ["mask-stats", str(sample_image_shards), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: {list_shards(sample_image_shards)[0]} is an images shard; mask-stats reads mask shard folders "
        "(segpic masks --out)"
    ]
    write_mask_shard(tmp_path / "sam", [(10, 0.5, 0.75)])
    shard = tmp_path / "sam" / shard_name(0, 1)
    shard.write_bytes(shard.read_bytes()[:200])
    result = CliRunner().invoke(app, ["mask-stats", str(tmp_path / "sam"), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"error: {shard}: not a readable Parquet file")


def outline_pixels(sheet: np.ndarray) -> np.ndarray:
    """(H, W) bool: pure black or pure white pixels, the two colours boundaries are drawn in."""
    return np.all(sheet == 0, axis=-1) | np.all(sheet == 255, axis=-1)


def test_contact_sheets_draw_region_boundaries_over_the_images(tmp_path, sample_image_shards):
    for generator, options in (("grid", (("grid", "3"),)), ("felzenszwalb", (("scale", "800"),))):
        make_masks(MasksConfig(images=sample_image_shards, out=tmp_path / generator, generator=generator, options=options))
    args = ["mask-stats", str(tmp_path / "grid"), str(tmp_path / "felzenszwalb"), "--images", str(sample_image_shards),
            "--out", str(tmp_path / "compare" / "mask_stats.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sheets = tmp_path / "compare" / "contact_sheets"
    assert sorted(path.name for path in sheets.iterdir()) == ["felzenszwalb.png", "grid.png"]
    assert f"wrote {tmp_path / 'compare' / 'mask_stats.json'}, {tmp_path / 'compare' / 'mask_stats.md'}, " in result.output
    assert str(sheets / "grid.png") in result.output and str(sheets / "felzenszwalb.png") in result.output
    grid = np.asarray(Image.open(sheets / "grid.png").convert("RGB"))
    gutter, cell_width, cell_height = 8, 256 + 8, 256 + 14 + 8
    assert grid.shape == (gutter + 3 * cell_height, gutter + 4 * cell_width, 3)  # ten sample photos: three rows of four
    assert (grid[:gutter] == grid[0, 0]).all() and (grid[:, 256 + gutter : 2 * gutter + 256] == grid[0, 0]).all()
    first_tile = grid[gutter : gutter + 256, gutter : gutter + 256]  # astronaut.png, 512x512 in 3x3 cells: thirds
    outlined = outline_pixels(first_tile)
    assert outlined[:, 84].all() and outlined[:, 170].all() and outlined[84, :].all()
    felzenszwalb = np.asarray(Image.open(sheets / "felzenszwalb.png").convert("RGB"))
    assert outline_pixels(felzenszwalb).sum() > outline_pixels(grid).sum()


SOLID_COLOURS = {"a-red": (200, 30, 30), "b-white": (255, 255, 255), "c-black": (0, 0, 0), "d-grey": (128, 128, 128)}


def test_boundaries_stand_out_on_any_colour_and_captions_sit_under_their_tile(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in SOLID_COLOURS.items():
        Image.new("RGB", (128, 64), colour).save(photos / f"{name}.png")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(photos), "--out", str(tmp_path / "images"), "--no-progress"]).exit_code == 0
    masks = ["masks", str(tmp_path / "images"), "--generator", "grid", "--set", "grid=2", "--out", str(tmp_path / "grid"), "--no-progress"]
    assert runner.invoke(app, masks).exit_code == 0
    stats = ["mask-stats", str(tmp_path / "grid"), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "s.json")]
    assert runner.invoke(app, stats).exit_code == 0
    sheet = np.asarray(Image.open(tmp_path / "contact_sheets" / "grid.png").convert("RGB")).astype(int)
    luma = sheet @ np.array([0.299, 0.587, 0.114])
    for position, colour in enumerate(SOLID_COLOURS.values()):
        left = 8 + position * (256 + 8)
        tile = sheet[8 : 8 + 128, left : left + 256]  # 128x64 scaled to 256x128, at the top of its cell
        drawn = np.any(tile != colour, axis=-1)
        assert drawn[:, 127].all() and drawn[63, :].all() and drawn.sum() < 2 * (256 + 128)  # the 2x2 grid's two lines
        contrast = np.abs(luma[8 : 8 + 128, left : left + 256][drawn] - np.dot(colour, [0.299, 0.587, 0.114]))
        assert contrast.min() >= 100, colour
        caption = luma[8 + 128 : 8 + 128 + 14, left : left + 256]  # light text on the dark background
        assert (caption > 128).sum() > 50, "the caption sits right under its tile"
        assert (luma[8 + 128 + 14 : 8 + 256, left : left + 256] < 30).all(), "and nothing below it in the cell"
