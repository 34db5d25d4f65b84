"""Contact sheets: a dozen images of a mask source with their region boundaries drawn over them.

A table of region counts cannot show whether masks follow objects or cut across them; a
glance at a sheet can. Tiles are the first images of the set (reading stops there, so a
sheet of ImageNet costs one row group), each captioned with its id and region count;
images the masks stage could not label are captioned `failed` and show no boundaries.
"""

import io
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.atomic_files import atomic_output
from pipeline.shards import is_failure_marker, list_shards, read_rows

SHEET_IMAGES = 12
SHEET_COLUMNS = 4
TILE_SIDE = 256
CAPTION_HEIGHT = 14
BOUNDARY_COLOUR = (255, 32, 32)
BACKGROUND = (24, 24, 24)
CAPTION_COLOUR = (235, 235, 235)


def region_boundaries(label_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour lies in another region."""
    edges = np.zeros(label_map.shape, dtype=bool)
    edges[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edges[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    return edges


def _tile(image_bytes: bytes, mask_bytes: bytes, failed: bool) -> Image.Image:
    """The image scaled to fit TILE_SIDE, with boundaries of its label map (scaled alike, nearest) in red."""
    with Image.open(io.BytesIO(image_bytes)) as opened:
        image = opened.convert("RGB")
    scale = TILE_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = np.array(image.resize(size, Image.Resampling.BILINEAR))
    if not failed:
        with Image.open(io.BytesIO(mask_bytes)) as mask:
            label_map = np.asarray(mask.resize(size, Image.Resampling.NEAREST))
        pixels[region_boundaries(label_map)] = BOUNDARY_COLOUR
    return Image.fromarray(pixels)


def _tiles(masks: Path, images: Path) -> list[tuple[Image.Image, str]]:
    """Up to SHEET_IMAGES (tile, caption) pairs from the first mask shards and their image shards."""
    tiles: list[tuple[Image.Image, str]] = []
    for mask_shard in list_shards(masks):
        image_shard = images / mask_shard.name
        wanted = SHEET_IMAGES - len(tiles)
        mask_rows = islice(read_rows(mask_shard, ["id", "mask", "num_regions"]), wanted)
        image_rows = islice(read_rows(image_shard, ["id", "image"]), wanted)
        for mask_row, image_row in zip(mask_rows, image_rows):
            if mask_row["id"] != image_row["id"]:
                raise ValueError(f"{mask_shard}: row {mask_row['id']!r} does not line up with {image_shard}")
            failed = is_failure_marker(mask_row["num_regions"])
            caption = f"{mask_row['id']}: " + ("failed" if failed else f"{mask_row['num_regions']} regions")
            tiles.append((_tile(image_row["image"]["bytes"], mask_row["mask"]["bytes"], failed), caption))
        if len(tiles) >= SHEET_IMAGES:
            break
    return tiles


def write_contact_sheet(masks: Path, images: Path, out: Path) -> Path:
    """Draw the sheet of the mask shards in `masks` over their images in `images`; PNG written atomically to `out`."""
    tiles = _tiles(masks, images)
    if not tiles:
        raise ValueError(f"{masks}: no rows to draw")
    rows = -(-len(tiles) // SHEET_COLUMNS)
    cell = (TILE_SIDE, TILE_SIDE + CAPTION_HEIGHT)
    sheet = Image.new("RGB", (cell[0] * SHEET_COLUMNS, cell[1] * rows), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for position, (tile, caption) in enumerate(tiles):
        left, top = (position % SHEET_COLUMNS) * cell[0], (position // SHEET_COLUMNS) * cell[1]
        sheet.paste(tile, (left + (TILE_SIDE - tile.width) // 2, top + (TILE_SIDE - tile.height) // 2))
        draw.text((left + 3, top + TILE_SIDE + 1), caption[:40], fill=CAPTION_COLOUR)
    with atomic_output(out) as temporary:
        sheet.save(temporary, format="PNG")
    return out
