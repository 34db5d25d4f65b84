"""Benchmark: `segpic repaint` against re-running the network, what keeping raw masks costs, and their size.

Varying the label-map rule without raw masks means running SAM again; with them it means a
repaint. On the same images (the sample photos at Kodak's 768x512, or `--images-dir`), with SAM
`--model` (default vit_b, random weights) and `--points-per-side` (default 16) points, one run
prints:

- the masks stage (`make_masks`: decode, network, raw masks, label maps, shards) with raw masks
  kept and without, in s/image, and the share keeping them adds (target: under 5 %);
- `segpic repaint` of the kept raw masks into label maps, in images/s, and its speed-up over the
  masks stage (target: at least 50x), checking the repainted shards equal the stage's;
- the parts a kept mask costs per image: RLE encoding by each candidate (pycocotools on the host,
  runs found by torch as on a GPU, segment-anything's own `mask_to_rle_pytorch` + `coco_encode_rle`),
  and the label-map rule from raw masks;
- raw masks per image, raw bytes per image against label-map bytes per image.

Random weights make every candidate score alike, so `pred_iou_thresh` is set to keep `--keep`
(15 %) of them, as a trained SAM keeps a few hundred of thousands, and box NMS is off (it would
merge random blobs): repaint then handles more masks per image than a trained SAM usually keeps,
which makes it slower, not faster. `--felzenszwalb` adds the same figures for the weight-free
generator of the default study (`make repro`), whose DVC stages now run it into raw masks and
repaint them.

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
from pipeline.generators.amg_engine import AmgSettings
from pipeline.generators.sam_segmenter import SamSegmenter
from pipeline.ingest import IngestConfig, ingest
from pipeline.label_maps import LabelMapRule, label_map_from_raw
from pipeline.masks import MasksConfig, make_masks
from pipeline.raw_mask_format import RawMasks, mask_runs, rle_from_runs, rles_from_masks
from pipeline.repaint import RepaintConfig, repaint
from pipeline.shards import list_shards, read_rows

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


def stage_and_repaint(name: str, options: dict, model, images: Path, scratch: Path, count: int) -> None:
    """The masks stage with and without raw masks, then repaint; prints s/image, ratios and bytes."""
    def stage(out: Path, keep: bool) -> float:
        generator = build_generator(name, options, **({"model": model} if model is not None else {}))
        config = MasksConfig(images=images, out=out, generator=name, options=tuple(options.items()), keep_raw=keep)
        return timed(lambda: make_masks(config, generator))[0]

    without = stage(scratch / f"{name}-plain", keep=False)
    kept = stage(scratch / f"{name}-labels", keep=True)
    raw = scratch / f"{name}-labels-raw"
    repaint_s, _ = timed(lambda: repaint(RepaintConfig(raw=raw, out=scratch / f"{name}-repainted", options=tuple(
        (key, value) for key, value in options.items() if key in ("speck_area", "max_regions")))))
    same = all((scratch / f"{name}-repainted" / path.name).read_bytes() == path.read_bytes() for path in list_shards(scratch / f"{name}-labels"))
    masks = sum(len(row["masks"]) for path in list_shards(raw) for row in read_rows(path, ["masks"])) / count
    print(f"{name}: masks stage {without / count:.3f} s/image without raw masks, {kept / count:.3f} with "
          f"({(kept - without) / without:+.1%}); repaint {count / repaint_s:.1f} images/s = {kept / repaint_s:.0f}x the masks stage "
          f"(shards equal: {same})")
    print(f"{name}: {masks:.1f} raw masks/image, raw {folder_bytes(raw) / count / 1024:.1f} KiB/image, "
          f"label maps {folder_bytes(scratch / f'{name}-labels') / count / 1024:.1f} KiB/image")


def encoding_costs(raw: Path, device: torch.device) -> None:
    """Per image of a raw set: its masks (decoded, on `device`) encoded by each candidate, and the rule applied to them."""
    costs = {"pycocotools (host)": 0.0, "torch runs (GPU path)": 0.0, "segment-anything RLE": 0.0, "label-map rule": 0.0}
    rows = [row for path in list_shards(raw) for row in read_rows(path)]
    for row in rows:
        stored = RawMasks.from_rows(row["height"], row["width"], row["masks"], row["id"])
        rles = [{"size": [stored.height, stored.width], "counts": mask.counts.encode()} for mask in stored.masks]
        masks = torch.from_numpy(coco_mask.decode(rles).transpose(2, 0, 1).astype(bool)).to(device)
        costs["pycocotools (host)"] += timed(lambda: rles_from_masks(masks.cpu()))[0]
        costs["torch runs (GPU path)"] += timed(lambda: [rle_from_runs(runs, stored.height, stored.width) for runs in mask_runs(masks)])[0]
        costs["segment-anything RLE"] += timed(lambda: [coco_encode_rle(rle) for rle in mask_to_rle_pytorch(masks)])[0]
        costs["label-map rule"] += timed(lambda: label_map_from_raw(stored, LabelMapRule()))[0]
    print(f"per image ({device}, {np.mean([len(row['masks']) for row in rows]):.1f} masks): "
          + ", ".join(f"{name} {seconds / len(rows) * 1000:.1f} ms" for name, seconds in costs.items()))


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
        encoding_costs(scratch / "sam-labels-raw", device)
        if args.felzenszwalb:
            stage_and_repaint("felzenszwalb", {}, None, images, scratch, len(pictures))


if __name__ == "__main__":
    main()
