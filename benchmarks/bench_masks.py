"""Benchmark: our `sam` generator vs stock one-image-at-a-time SamAutomaticMaskGenerator.

Same network (vit_b, random weights, CPU or `--device cuda`), same AMG settings with the quality thresholds
at 0 and box NMS off so every mask survives; the script asserts both produce identical
masks in the same order, then prints the time ratio. It also prints the stored size of
our label map PNG per image against COCO RLE JSON of the same SAM masks (the compressed
RLE strings COCO uses, encoded here as pycocotools' `rleToString` does, and SAM's
uncompressed RLE), measured in the same run.

    .venv/bin/python benchmarks/bench_masks.py [--images 3] [--points-per-side 8] [--threads 2]
"""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.utils.amg import mask_to_rle_pytorch

from pipeline.generators import build_generator
from pipeline.label_maps import encode_label_map, masks_to_label_map
from pipeline.mask_labelling import decode_rgb
from pipeline.sample import sample_photo_paths


def coco_rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE counts (pycocotools maskApi.c rleToString): delta + 5-bit varint chars."""
    chars = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = not ((chunk & 0x10 == 0 and value == 0) or (chunk & 0x10 and value == -1))
            chars.append(chr(chunk + (0x20 if more else 0) + 48))
    return "".join(chars)


def rle_json_bytes(masks: list[np.ndarray], compressed: bool) -> int:
    """Bytes of the masks as a JSON list of COCO RLE dicts."""
    rles = mask_to_rle_pytorch(torch.as_tensor(np.stack(masks)))
    records = [{"size": rle["size"], "counts": coco_rle_string(rle["counts"]) if compressed else rle["counts"]} for rle in rles]
    return len(json.dumps(records, separators=(",", ":")).encode())


def stock_run(generator: SamAutomaticMaskGenerator, encoded: list[bytes]) -> tuple[float, list[list[dict]]]:
    """Stock usage: decode an image, generate its masks, next image."""
    started = time.perf_counter()
    results = [generator.generate(decode_rgb(data)) for data in encoded]
    return time.perf_counter() - started, results


def our_run(generator, encoded: list[bytes]):
    """Our stage's way: decoding on a worker thread ahead of mask generation."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        images = pool.map(decode_rgb, encoded)
        results = [(image.shape[:2], generator.amg.generate(image)) for image in images]
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().to(args.device).eval()
    settings = dict(points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    encoded = [path.read_bytes() for path in sample_photo_paths()[: args.images]]

    stock = SamAutomaticMaskGenerator(sam, **settings)
    ours = build_generator("sam", {"model": "vit_b", **settings}, model=sam)
    stock.generate(np.zeros((64, 64, 3), dtype=np.uint8))  # warm-up (allocators, kernels) before either is timed
    stock_seconds, stock_masks = stock_run(stock, encoded)
    our_seconds, our_masks = our_run(ours, encoded)

    png_bytes, rle_bytes, rle_string_bytes, masks_total = 0, 0, 0, 0
    for stock_records, (size, regions) in zip(stock_masks, our_masks):
        assert len(regions) == len(stock_records)
        for region, record in zip(regions, stock_records):
            assert np.array_equal(region.to_full(*size), record["segmentation"]), "masks differ from stock AMG"
        masks = [record["segmentation"] for record in stock_records]
        masks_total += len(masks)
        png_bytes += len(encode_label_map(masks_to_label_map(regions, *size, ours.rule).label_map))
        rle_bytes += rle_json_bytes(masks, compressed=False)
        rle_string_bytes += rle_json_bytes(masks, compressed=True)

    count = len(encoded)
    print(f"vit_b random weights, {args.device}, {args.threads} threads, points_per_side={args.points_per_side}, {count} images, {masks_total} masks (identical)")
    print(f"stock SamAutomaticMaskGenerator: {stock_seconds / count:8.2f} s/image")
    print(f"segpic sam generator:            {our_seconds / count:8.2f} s/image   speed-up {stock_seconds / our_seconds:.2f}x")
    print(f"label map PNG:          {png_bytes / count:12.0f} B/image")
    print(f"COCO RLE JSON (string): {rle_string_bytes / count:12.0f} B/image   ratio {png_bytes / rle_string_bytes:.3f}x")
    print(f"SAM RLE JSON (counts):  {rle_bytes / count:12.0f} B/image   ratio {png_bytes / rle_bytes:.3f}x")


if __name__ == "__main__":
    main()
