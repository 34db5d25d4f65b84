"""What `segpic verify` checks in each row of a raw-mask shard (`pipeline.raw_mask_format`).

A row holds masks of its image's size, or none with the reason it failed; each mask's string
decodes to runs that tile exactly the image (checked first, so a damaged string never reaches
pycocotools' C decoder), and its stored `area` and `bbox` are those of the mask it decodes to.
"""

from typing import Any

from pycocotools import mask as coco_mask

from pipeline.raw_mask_format import runs_from_counts


def raw_row_problem(row: dict[str, Any], size: tuple[int, int] | None) -> str | None:
    """What is wrong with a raw shard row, if anything; `size` is its image's (width, height) when known."""
    width, height = row["width"], row["height"]
    if size is not None and (width, height) != size:
        return f"raw masks are for a {width}x{height} image, its image is {size[0]}x{size[1]}"
    if row["failure"] is not None:
        return f"a failed image ({row['failure']}) with {len(row['masks'])} mask(s)" if row["masks"] else None
    for number, mask in enumerate(row["masks"], start=1):
        problem = _mask_problem(mask, height, width)
        if problem:
            return f"mask {number}: {problem}"
    return None


def _mask_problem(mask: dict[str, Any], height: int, width: int) -> str | None:
    segmentation = mask["segmentation"]
    if list(segmentation["size"]) != [height, width]:
        return f"size {segmentation['size']}, the image is {height}x{width}"
    try:
        runs = runs_from_counts(segmentation["counts"])
    except (UnicodeEncodeError, ValueError) as error:
        return f"RLE counts do not decode ({error})"
    if (runs < 0).any() or runs.sum() != height * width:
        return f"RLE counts do not cover the {height}x{width} image"
    rle = {"size": [height, width], "counts": segmentation["counts"].encode("ascii")}
    area, box = int(coco_mask.area(rle)), coco_mask.toBbox(rle).astype(int).tolist()
    if (mask["area"], list(mask["bbox"])) != (area, box):
        return f"area {mask['area']} and bbox {mask['bbox']} are not the mask's ({area}, {box})"
    return None
