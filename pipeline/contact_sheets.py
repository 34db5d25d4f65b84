"""Contact sheets: a dozen images of a mask source with their region boundaries drawn over them.

A table of region counts cannot show whether masks follow objects or cut across them; a
glance at a sheet can. Tiles are the first images of the set (reading stops there, so a
sheet of ImageNet costs one row group), each captioned with its id and region count;
images the masks stage could not label are captioned `failed` and show no boundaries.

Boundaries are drawn in black or white, whichever stands out from the pixel beneath (a
fixed colour vanishes on objects of that colour); each tile sits at the top of its cell
with its caption right below it, and a gutter keeps neighbouring tiles apart.
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
GUTTER = 8
BACKGROUND = (24, 24, 24)
CAPTION_COLOUR = (235, 235, 235)
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def region_boundaries(label_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour lies in another region."""
    edges = np.zeros(label_map.shape, dtype=bool)
    edges[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edges[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    return edges


def draw_boundaries(pixels: np.ndarray, boundaries: np.ndarray) -> None:
    """Paint `boundaries` ((H, W) bool) into `pixels` ((H, W, 3) uint8) in place: black over light pixels, white over dark."""
    light = pixels[boundaries] @ LUMA_WEIGHTS >= 128
    pixels[boundaries] = np.where(light[:, None], 0, 255).astype(np.uint8)


def _tile(image_bytes: bytes, mask_bytes: bytes, failed: bool) -> Image.Image:
    """The image scaled to fit TILE_SIDE, with boundaries of its label map (scaled alike, nearest) drawn over it."""
    with Image.open(io.BytesIO(image_bytes)) as opened:
        image = opened.convert("RGB")
    scale = TILE_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = np.array(image.resize(size, Image.Resampling.BILINEAR))
    if not failed:
        with Image.open(io.BytesIO(mask_bytes)) as mask:
            label_map = np.asarray(mask.resize(size, Image.Resampling.NEAREST))
        draw_boundaries(pixels, region_boundaries(label_map))
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
    cell = (TILE_SIDE + GUTTER, TILE_SIDE + CAPTION_HEIGHT + GUTTER)
    sheet = Image.new("RGB", (GUTTER + cell[0] * SHEET_COLUMNS, GUTTER + cell[1] * rows), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for position, (tile, caption) in enumerate(tiles):
        left = GUTTER + (position % SHEET_COLUMNS) * cell[0]
        top = GUTTER + (position // SHEET_COLUMNS) * cell[1]
        sheet.paste(tile, (left, top))
        draw.text((left, top + tile.height + 1), caption[:42], fill=CAPTION_COLOUR)
    with atomic_output(out) as temporary:
        sheet.save(temporary, format="PNG")
    return out
