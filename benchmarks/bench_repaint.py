"""Benchmark: `segpic repaint` against re-running the network, what keeping raw masks costs, and their size.

Varying the label-map rule without raw masks means running SAM again; with them it means a
repaint. On the same images (the sample photos at Kodak's 768x512, or `--images-dir`), with SAM
`--model` (default vit_b, random weights) and `--points-per-side` (default 16) points, one run
prints:

- the masks stage (`make_masks`: decode, network, raw masks, label maps, shards) in s/image, run
  once keeping raw masks and once not (on a shared machine the difference between two such runs
  is mostly load), and, measured apart on the same masks, what keeping them adds: building their
  rows and writing their shards, in ms/image and as a share of the stage (target: under 5 %);
- `segpic repaint` of the kept raw masks into label maps, in images/s, and its speed-up over the
  masks stage (target: at least 50x), checking the repainted shards equal the stage's;
- per image, what the label maps now cost beside the network: RLE encoding (pycocotools, the
  encoder used, against segment-anything's own `mask_to_rle_pytorch` + `coco_encode_rle`), and the
  rule from raw masks against painting the same dense masks with torch, as the masks stage did
  before it kept raw masks;
- raw masks per image, raw bytes per image against label-map bytes per image.

Random weights make every candidate score alike, so `pred_iou_thresh` is set to keep `--keep`
(15 %) of them, as a trained SAM keeps a few hundred of thousands, and box NMS is off (it would
merge random blobs): repaint then handles more masks per image than a trained SAM usually keeps.
Random-weight masks are also speckled, so their RLE strings are far longer than a trained SAM's
smooth masks need: bytes and decoding times here are upper bounds. `--felzenszwalb` adds the
stage and repaint figures for the weight-free generator of the default study (`make repro`),
whose DVC stages now run it into raw masks and repaint them.

    .venv/bin/python benchmarks/bench_repaint.py                       # vit_b, 16x16 points, 2 images, CPU
    .venv/bin/python benchmarks/bench_repaint.py --images 8 --device cuda --model vit_h --points-per-side 32
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from segment_anything import sam_model_registry
from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

from pipeline.generators import build_generator
from pipeline.generators.sam_family.amg_settings import AmgSettings
from pipeline.generators.sam_family.sam.segmenter import SamSegmenter
from pipeline.ingest import IngestConfig, ingest
from pipeline.label_maps import RULE_FIELDS, LabelMapRule, label_map_from_raw, paint_order
from pipeline.manifest import read_manifest
from pipeline.masks import MasksConfig, make_masks
from pipeline.raw_mask_format import RawMasks, rles_from_masks
from pipeline.raw_sets import raw_outcome
from pipeline.repaint import RawRecord, RepaintConfig, repaint
from pipeline.shard_outputs import RawMaskOutput, write_outputs
from pipeline.shards import DEFAULT_ROW_GROUP_BYTES, list_shards, read_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import load_images, realistic_iou_threshold  # noqa: E402  (the benchmarks share their images and regime)


def write_image_shards(images: list[np.ndarray], folder: Path) -> Path:
    photos = folder / "photos"
    photos.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(photos / f"{index:04d}.png")
    ingest(IngestConfig(source=str(photos), out=folder / "images"))
    return folder / "images"


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in list_shards(folder))


def timed(work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def stage_and_repaint(name: str, options: dict, model, images: Path, scratch: Path, count: int) -> float:
    """The masks stage without and with raw masks, then repaint; prints s/image, ratios and bytes; returns the stage's s/image."""
    def stage(out: Path, keep: bool) -> float:
        generator = build_generator(name, options, **({"model": model} if model is not None else {}))
        config = MasksConfig(images=images, out=out, generator=name, options=tuple(options.items()), keep_raw=keep)
        return timed(lambda: make_masks(config, generator))[0]

    without = stage(scratch / f"{name}-plain", keep=False)
    kept = stage(scratch / f"{name}-labels", keep=True)
    raw, labels = scratch / f"{name}-labels-raw", scratch / f"{name}-labels"
    rule = tuple((key, value) for key, value in options.items() if key in RULE_FIELDS)
    repaint_s, _ = timed(lambda: repaint(RepaintConfig(raw=raw, out=scratch / f"{name}-repainted", options=rule)))
    same = all((scratch / f"{name}-repainted" / path.name).read_bytes() == path.read_bytes() for path in list_shards(labels))
    keeping = raw_keeping_seconds(raw, scratch / f"{name}-rewritten")
    masks = sum(len(row["masks"]) for path in list_shards(raw) for row in read_rows(path, ["masks"])) / count
    print(f"{name}: masks stage {without / count:.3f} s/image without raw masks, {kept / count:.3f} with; keeping them: "
          f"{keeping / count * 1000:.1f} ms/image = {keeping / kept:.2%} of the stage")
    print(f"{name}: repaint {count / repaint_s:.2f} images/s = {kept / repaint_s:.0f}x the masks stage (shards equal: {same})")
    print(f"{name}: {masks:.1f} raw masks/image, raw {folder_bytes(raw) / count / 1024:.1f} KiB/image, "
          f"label maps {folder_bytes(labels) / count / 1024:.1f} KiB/image")
    return kept / count


def raw_keeping_seconds(raw: Path, out: Path) -> float:
    """Seconds to build the raw rows of `raw`'s masks and write their shards: what keeping raw masks adds to the stage."""
    manifest = read_manifest(raw)
    output = RawMaskOutput(out, manifest.settings["generator"], manifest.settings)
    seconds = 0.0
    for entry in manifest.shards:
        rows = list(read_rows(raw / entry.name))
        outcomes = [(row, raw_outcome(row, raw / entry.name)) for row in rows]
        records = [(RawRecord(row["id"], row["width"], row["height"]), outcome) for row, outcome in outcomes]
        seconds += timed(lambda: write_outputs([output], entry.name, ([output.row(*pair)] for pair in records), DEFAULT_ROW_GROUP_BYTES, entry.image_sha256))[0]
    return seconds


def label_map_costs(raw: Path, device: torch.device) -> None:
    """Per image of a raw set: its masks (decoded, on `device`) RLE-encoded two ways, the rule from raw masks, torch painting."""
    costs = {"RLE by pycocotools": 0.0, "RLE by segment-anything": 0.0, "rule from raw masks": 0.0, "torch painting of dense masks": 0.0}
    rows = [row for path in list_shards(raw) for row in read_rows(path)]
    for row in rows:
        stored = RawMasks.from_rows(row["height"], row["width"], row["masks"], row["id"])
        rles = [{"size": [stored.height, stored.width], "counts": mask.counts.encode()} for mask in stored.masks]
        masks = torch.from_numpy(coco_mask.decode(rles).transpose(2, 0, 1).astype(bool)).to(device)
        costs["RLE by pycocotools"] += timed(lambda: rles_from_masks(masks))[0]
        costs["RLE by segment-anything"] += timed(lambda: [coco_encode_rle(rle) for rle in mask_to_rle_pytorch(masks)])[0]
        costs["rule from raw masks"] += timed(lambda: label_map_from_raw(stored, LabelMapRule()))[0]
        costs["torch painting of dense masks"] += timed(lambda: torch_painting(masks, stored))[0]
    print(f"per image ({device}, {np.mean([len(row['masks']) for row in rows]):.1f} masks, "
          f"{np.mean([len(mask['segmentation']['counts']) for row in rows for mask in row['masks']]) / 1024:.1f} KiB RLE each): "
          + ", ".join(f"{name} {seconds / len(rows) * 1000:.1f} ms" for name, seconds in costs.items()))


def torch_painting(masks: torch.Tensor, stored: RawMasks) -> np.ndarray:
    """Step 1 of the rule on dense masks with torch, largest first (what the masks stage did before it kept raw masks)."""
    painted = torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    for region_id, index in enumerate(paint_order([mask.area for mask in stored.masks], [mask.quality for mask in stored.masks]), start=1):
        painted.masked_fill_(masks[index], region_id)
    return painted.cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="vit_b", choices=("vit_h", "vit_l", "vit_b"))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--images-dir", type=Path, default=None, help="Folder of images (e.g. Kodak); default: sample photos at 768x512.")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--keep", type=float, default=0.15, help="Share of candidates the predicted-IoU threshold keeps.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--felzenszwalb", action="store_true", help="Also the default study's weight-free generator.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sam = sam_model_registry[args.model]().to(device).eval()
    pictures = load_images(args.images, args.images_dir)
    base = AmgSettings(points_per_side=args.points_per_side, stability_score_thresh=0.0, box_nms_thresh=1.0)
    threshold, candidates = realistic_iou_threshold(SamSegmenter(sam), pictures, base, args.keep)
    settings = AmgSettings(**{**vars(base), "pred_iou_thresh": threshold})
    print(f"{args.model} random weights, {device}, {args.threads} CPU threads, {args.points_per_side}x{args.points_per_side} points, "
          f"{len(pictures)} images {pictures[0].shape[1]}x{pictures[0].shape[0]}; pred_iou_thresh={threshold:.4f} keeps "
          f"{args.keep:.0%} of {candidates} candidates/image, stability filter and box NMS off")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images = write_image_shards(pictures, scratch)
        options = {**vars(settings), "model": args.model}
        stage_and_repaint("sam", options, sam, images, scratch, len(pictures))
        label_map_costs(scratch / "sam-labels-raw", device)
        if args.felzenszwalb:
            stage_and_repaint("felzenszwalb", {}, None, images, scratch, len(pictures))


if __name__ == "__main__":
    main()
