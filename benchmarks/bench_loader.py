"""Samples/s of the training loader vs a plain loader over image files with PNG masks.

The plain loader is what one writes first: open each image and mask file with Pillow, turn
the whole image into a float tensor, then crop, flip and relabel with torch, one sample
at a time in the main process. Ours reads encoded bytes from Parquet shards, decodes with
the fast Pillow-identical decoders, cuts the crop while pixels are still uint8 and can
decode in worker processes. Both produce the same crops (the same keyed windows); the
script checks that on the first batch before timing.

Our loader runs in two regimes. With the decoded-image cache off every sample is decoded,
as on a data set larger than memory (ImageNet): that is the like-for-like comparison,
first in the main process (same cores as the plain loader), then with workers. With the
cache on, epochs after the first reuse decoded images, as on sets that fit in memory.

Run: .venv/bin/python benchmarks/bench_loader.py [--workers 2] [--epochs 3] [--copies 16]
"""

import argparse
import io
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.segmentation import felzenszwalb

from model.training.config import Partition, preset_config
from model.training.crops import random_window
from model.training.dataset import EpochSampler, build_training_data, pixels_to_unit
from pipeline.sample import sample_photo_paths
from pipeline.shards import IMAGE_SCHEMA, MASK_SCHEMA, ShardWriter, shard_name


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def distinct_copy(data: bytes, copy: int) -> bytes:
    """The same picture with a comment naming the copy: distinct bytes, as distinct photos would be.

    Identical payloads would let Parquet's dictionary encoding store each photo once,
    which no real data set allows.
    """
    text = f"copy {copy}".encode()
    if data.startswith(b"\xff\xd8"):  # JPEG: a COM segment right after SOI
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    chunk = b"tEXt" + b"comment\0" + text  # PNG: a tEXt chunk right after IHDR
    ihdr_end = 8 + 25
    framed = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:ihdr_end] + framed + data[ihdr_end:]


def write_inputs(root: Path, copies: int) -> tuple[Path, Path, Path]:
    """The same photos and felzenszwalb label maps as a file folder and as aligned shards."""
    folder, images, masks = root / "files", root / "images", root / "masks"
    folder.mkdir()
    name = shard_name(0, 1)
    with ShardWriter(images / name, IMAGE_SCHEMA) as image_shard, ShardWriter(masks / name, MASK_SCHEMA) as mask_shard:
        for path in sample_photo_paths():
            with Image.open(path) as photo:
                pixels = np.asarray(photo.convert("RGB"))
            label_map = felzenszwalb(pixels, scale=400, sigma=0.8, min_size=200)
            mask_png = _png(label_map.astype(np.uint8 if label_map.max() < 256 else np.uint16))
            for copy in range(copies):
                record = f"{path.stem}-{copy}"
                image_bytes = distinct_copy(path.read_bytes(), copy)
                (folder / f"{record}{path.suffix}").write_bytes(image_bytes)
                (folder / f"{record}.mask.png").write_bytes(distinct_copy(mask_png, copy))
                image_shard.write(
                    {"id": record, "image": {"bytes": image_bytes, "path": path.name},
                     "width": pixels.shape[1], "height": pixels.shape[0]}
                )
                mask_shard.write(
                    {"id": record, "mask": {"bytes": distinct_copy(mask_png, copy), "path": None},
                     "num_regions": int(label_map.max()) + 1, "coverage": 1.0, "mean_iou": 0.0,
                     "generator": "felzenszwalb", "settings_hash": "bench"}
                )
    return folder, images, masks


def plain_sample(image_path: Path, mask_path: Path, key: tuple[int, int, int], seed: int, crop: int) -> dict:
    """Reference: whole image to float first, then crop, flip and relabel with torch."""
    _, epoch, position = key
    image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1).float() / 255
    label_map = torch.from_numpy(np.array(Image.open(mask_path)).astype(np.int64))
    window = random_window(image.shape[1], image.shape[2], crop, np.random.default_rng([seed, epoch, position]))
    rows, cols = slice(window.top, window.top + crop), slice(window.left, window.left + crop)
    image, label_map = image[:, rows, cols], label_map[rows, cols]
    flips = [dim for dim, flip in ((-1, window.flip_horizontal), (-2, window.flip_vertical)) if flip]
    if flips:
        image, label_map = torch.flip(image, flips), torch.flip(label_map, flips)
    _, relabelled = torch.unique(label_map, return_inverse=True)
    return {"image": image, "label_map": relabelled}


def plain_batches(folder: Path, ids: list[str], sampler: EpochSampler, crop: int, epochs: int):
    suffix = {path.stem: path.suffix for path in sample_photo_paths()}
    for epoch in range(epochs):
        sampler.set_position(epoch, 0)
        keys = list(sampler)
        for start in range(0, len(keys), sampler.batch_size):
            samples = []
            for key in keys[start : start + sampler.batch_size]:
                record = ids[key[0]]
                image_path = folder / f"{record}{suffix[record.rsplit('-', 1)[0]]}"
                samples.append(plain_sample(image_path, folder / f"{record}.mask.png", key, sampler.seed, crop))
            yield {name: torch.stack([s[name] for s in samples]) for name in samples[0]}


def our_batches(data, epochs: int):
    for epoch in range(epochs):
        data.sampler.set_position(epoch, 0)
        for batch in data.train:
            yield {**batch, "image": pixels_to_unit(batch["image"])}


def samples_per_second(batches, epoch_size: int) -> tuple[float, float]:
    """(first epoch, later epochs) samples/s: the first pays for decoding, later ones may hit caches."""
    count, started, first = 0, time.perf_counter(), None
    for batch in batches:
        count += len(batch["image"])
        if first is None and count == epoch_size:
            first = (count / (time.perf_counter() - started), time.perf_counter())
    return first[0], (count - epoch_size) / (time.perf_counter() - first[1])


def _ours(images: Path, masks: Path, root: Path, arguments: argparse.Namespace, workers: int, cache_mb: int = 0):
    config = preset_config(
        "paper", images, root / "run", partition=Partition(masks), crop=arguments.crop,
        batch_size=arguments.batch_size, num_workers=workers, val_count=0, decoded_cache_mb=cache_mb,
    )
    return build_training_data(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--copies", type=int, default=16, help="ids per sample photo (distinct bytes each)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        folder, images, masks = write_inputs(Path(root), arguments.copies)

        def ours(workers: int, cache_mb: int = 0):
            return _ours(images, masks, Path(root), arguments, workers, cache_mb)

        ids = [record.id for record in ours(0).train.dataset.records]
        sampler = EpochSampler(len(ids), arguments.batch_size, seed=0)
        epoch_size = sampler.batches_per_epoch * arguments.batch_size
        first_plain = next(plain_batches(folder, ids, sampler, arguments.crop, 1))
        first_ours = next(our_batches(ours(0), 1))
        assert all(torch.equal(first_plain[name], first_ours[name]) for name in first_plain), "loaders disagree"
        workers, epochs = arguments.workers, arguments.epochs
        loaders = {
            "plain loader (files, main process)": lambda: plain_batches(folder, ids, sampler, arguments.crop, epochs),
            "ours, no cache, main process": lambda: our_batches(ours(0), epochs),
            f"ours, no cache, {workers} workers": lambda: our_batches(ours(workers), epochs),
            "ours, 1 GiB cache, main process": lambda: our_batches(ours(0, 1024), epochs),
            f"ours, 1 GiB cache, {workers} workers": lambda: our_batches(ours(workers, 1024), epochs),
        }
        rates = {name: samples_per_second(batches(), epoch_size) for name, batches in loaders.items()}
    plain_first, plain_later = rates["plain loader (files, main process)"]
    print(f"{len(ids)} records, crop {arguments.crop}, batch {arguments.batch_size}, {arguments.epochs} epochs")
    print(f"{'loader':40s} {'epoch 1':>10s} {'ratio':>6s} {'epochs 2+':>10s} {'ratio':>6s}  (samples/s)")
    for name, (first, later) in rates.items():
        print(f"{name:40s} {first:10.1f} {first / plain_first:5.2f}x {later:10.1f} {later / plain_later:5.2f}x")

if __name__ == "__main__":
    main()
