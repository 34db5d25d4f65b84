"""Benchmark: stock SamAutomaticMaskGenerator vs our engine's exact and fast modes, and the whole masks stage.

Same network (random weights; `--model vit_h` on a GPU, `vit_b` on the CPU), same AMG
settings, in a realistic regime: `pred_iou_thresh` is set from the network's own
predicted IoUs on these images so that about `--keep` (15 %) of the candidates pass it,
as a trained SAM-H keeps a few hundred of 3,072 on natural photos (stability filter off;
with random weights box NMS then merges most survivors). One run prints:

- stock s/image, exact mode s/image and ratio (and whether its masks equal stock's, mask
  for mask), fast mode s/image and ratio, each split into image encoder, mask decoder (the
  network's prompt part: stock's `MaskDecoder` calls; our `predict_candidates`, which in fast
  mode includes making low-res masks for the prompts with a survivor) and the rest (filters,
  upsampling, NMS, label map), with speed-ups after the encoder and after the decoder;
- fast mode's agreement with exact mode: median and 5th percentile per-prompt mask IoU,
  mean label-map agreement;
- peak memory (GPU: allocated by torch, per mode; CPU: process peak RSS);
- the masks stage (`run_local`: decode, generate, PNG-encode, write shards) in images/s
  on the same images, against the generator's own rate.

    .venv/bin/python benchmarks/bench_masks.py --device cuda                  # vit_h, 32x32, 8 images
    .venv/bin/python benchmarks/bench_masks.py --device cpu --model vit_b --images 2

`--sam3` prints instead, on the same images, s/image, label-map regions and masks per image and
peak memory for `sam` exact mode (`--model`), SAM 2.1's official generator (`--sam2 large`, same
regime, random weights), `sam3` points mode (same regime) and concepts mode:

    .venv/bin/python benchmarks/bench_masks.py --sam3 --device cuda --sam3-checkpoint sam3.pt --sam-checkpoint sam_vit_h_4b8939.pth
    .venv/bin/python benchmarks/bench_masks.py --sam3 --sam3-small --model vit_b --images 2 --points-per-side 4

`--sam-small` (and `--sam3-small`) put the tests' toy networks in place of the real ones, so that
`benchmarks/gpu.sh --smoke` runs every table on a CPU in seconds; their rates say nothing.
"""

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from tqdm import tqdm

from pipeline.generators.sam_family.engine.agreement import label_map_agreement, prompt_mask_ious
from pipeline.generators.sam_family.amg_settings import AmgSettings
from pipeline.generators.sam_family.engine.amg import AmgEngine
from pipeline.generators.sam_family.sam.generator import SamGenerator
from pipeline.generators.sam_family.sam.segmenter import SamSegmenter
from pipeline.ingest import IngestConfig, ingest
from pipeline.label_maps import LabelMapRule, label_map_from_raw
from pipeline.local_engine import run_local
from pipeline.masks import MasksConfig, image_shard_checksums
from pipeline.raw_mask_format import dense_raw_masks
from pipeline.sample import sample_photo_paths
from pipeline.shards import list_shards

KODAK_SIZE = (768, 512)


def _tests_on_path() -> None:
    """The tests' toy networks (`--sam-small`, `--sam3-small`) live in tests/, outside the package."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def sam_network(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The sam network of `--model` (random weights unless `--sam-checkpoint`), or the tests' toy SAM (`--sam-small`)."""
    if not args.sam_small:
        return sam_model_registry[args.model](checkpoint=args.sam_checkpoint or None).to(device).eval()
    _tests_on_path()
    from random_sams import tiny_sam

    return tiny_sam().to(device)


def sam_name(args: argparse.Namespace) -> str:
    return "toy sam" if args.sam_small else args.model


def load_images(count: int, folder: Path | None) -> list[np.ndarray]:
    """`count` RGB images: PNG/JPEG files of `folder` (e.g. Kodak), else the sample photos at Kodak's size."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}) if folder else sample_photo_paths()
    images = []
    for path in (paths * count)[:count]:
        with Image.open(path) as image:
            image = image.convert("RGB")
            images.append(np.asarray(image if folder else image.resize(KODAK_SIZE)))
    return images


class Timer:
    """Wall time of a callable, synchronising the device so GPU work is counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, work: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            started = time.perf_counter()
            result = work(*args, **kwargs)
            self.sync()
            self.seconds += time.perf_counter() - started
            return result

        return timed


@contextlib.contextmanager
def timing(owner: object, method: str, timer: Timer) -> Iterator[None]:
    """Count the time spent in `owner.method` on `timer` while the block runs."""
    original = getattr(owner, method)
    setattr(owner, method, timer.wrap(original))
    try:
        yield
    finally:
        setattr(owner, method, original)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process RSS"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def realistic_iou_threshold(segmenter: SamSegmenter, images: list[np.ndarray], settings: AmgSettings, keep: float) -> tuple[float, int]:
    """The predicted-IoU threshold that `keep` of all candidates (points x 3) exceed, and the candidate count."""
    grid = AmgEngine(segmenter, settings).point_grids[0]
    predicted = []
    with torch.inference_mode():
        for image in images:
            embedding = segmenter.embed([image])[0]
            points = torch.as_tensor(grid * np.array([[image.shape[1], image.shape[0]]]), device=segmenter.device)
            for start in range(0, len(points), settings.points_per_batch):
                predicted.append(segmenter.predict_points(embedding, points[start : start + settings.points_per_batch])[1].flatten().float().cpu())
    predicted = torch.cat(predicted).numpy()
    return float(np.quantile(predicted, 1.0 - keep)), len(predicted) // len(images)


@dataclass
class Timing:
    """Seconds in all, in the image encoder and in the mask decoder (the network's prompt part)."""

    total: float
    encoder: float
    decoder: float


def time_stock(sam, settings: AmgSettings, images: list[np.ndarray], device: torch.device) -> tuple[Timing, list[list[dict]]]:
    """Stock AMG's timing and masks, one image after the other."""
    stock = SamAutomaticMaskGenerator(sam, **vars(settings))
    total, encoder, decoder = Timer(device), Timer(device), Timer(device)
    with timing(stock.predictor, "set_image", encoder), timing(sam.mask_decoder, "forward", decoder):
        masks = [total.wrap(stock.generate)(image) for image in images]
    return Timing(total.seconds, encoder.seconds, decoder.seconds), masks


def time_engine(segmenter: SamSegmenter, settings: AmgSettings, images: list[np.ndarray], batch: int, fast: bool, device: torch.device):
    """Our engine's timing, label maps and engine on all images at once, `batch` crops per encoder call
    (raw masks, then the label-map rule, as the masks stage makes them)."""
    total, encoder, decoder = Timer(device), Timer(device), Timer(device)
    engine = AmgEngine(segmenter, settings, image_batch=batch, all_prompts=fast and device.type == "cuda")

    def label_maps(images):
        return [label_map_from_raw(raw, LabelMapRule()) for raw in engine.raw_masks(images)]

    with timing(segmenter, "embed", encoder), timing(segmenter, "predict_candidates", decoder):
        results = total.wrap(label_maps)(images)
    return Timing(total.seconds, encoder.seconds, decoder.seconds), results, engine


def time_masks_stage(sam, settings: AmgSettings, images: list[np.ndarray], batch: int, workers: int) -> float:
    """Seconds of the masks stage's local engine on image shards of `images` (decode, generate, encode, write)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder, shards, out = Path(scratch) / "images", Path(scratch) / "shards", Path(scratch) / "masks"
        folder.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{index:04d}.png")
        ingest(IngestConfig(source=str(folder), out=shards))
        options = {field: getattr(settings, field) for field in vars(settings)}
        generator = SamGenerator(SamGenerator.Config(**options, batch_size=batch), model=sam)
        config = MasksConfig(images=shards, out=out, generator="sam", workers=workers)
        started = time.perf_counter()
        plan = [(shard, config.outputs(generator)) for shard in list_shards(shards)]
        with tqdm(disable=True) as progress:
            run_local(config, generator, plan, image_shard_checksums(shards), progress)
        return time.perf_counter() - started


def stock_raw_masks(records: list[dict], image: np.ndarray):
    """Stock AMG's records of `image` as raw masks, in their order."""
    masks = np.stack([record["segmentation"] for record in records]) if records else np.zeros((0, *image.shape[:2]), dtype=bool)
    return dense_raw_masks(masks, predicted_ious=[record["predicted_iou"] for record in records])


def same_masks(stock: list[list[dict]], exact_engine: AmgEngine, images: list[np.ndarray]) -> bool:
    """Exact mode's masks equal stock's, mask for mask and in order (recomputed, untimed)."""
    for records, found in zip(stock, exact_engine.masks(images)):
        if len(records) != len(found.masks):
            return False
        if not all(torch.equal(mask.cpu(), torch.as_tensor(record["segmentation"])) for mask, record in zip(found.masks, records)):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="vit_h", choices=("vit_h", "vit_l", "vit_b"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--images-dir", type=Path, default=None, help="Folder of images (e.g. Kodak); default: sample photos at 768x512.")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.15, help="Share of candidates the predicted-IoU threshold keeps.")
    parser.add_argument("--batch", type=int, default=4, help="Crops per encoder call in our engine.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder in fast mode.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sam-checkpoint", default="", help="Weights of the sam network (random when empty).")
    parser.add_argument("--sam-small", action="store_true", help="segment-anything's modules at the tests' toy sizes (CPU smoke runs).")
    add_sam3_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.sam3:
        return sam3_comparison(args)
    device = torch.device(args.device)
    sam = sam_network(args, device)
    images = load_images(args.images, args.images_dir)
    exact, fast = SamSegmenter(sam), SamSegmenter(sam, fast=True, compile_encoder=args.compile)

    base = AmgSettings(points_per_side=args.points_per_side, stability_score_thresh=0.0)
    threshold, candidates = realistic_iou_threshold(exact, images, base, args.keep)
    settings = AmgSettings(**{**vars(base), "pred_iou_thresh": threshold})
    fast.embed(images[:1])  # warm-up (kernels, compilation) before anything is timed

    reset_peak(device)
    stock, stock_masks = time_stock(sam, settings, images, device)
    stock_peak = peak_memory(device)
    reset_peak(device)
    exact_t, exact_maps, exact_engine = time_engine(SamSegmenter(sam), settings, images, args.batch, False, device)
    exact_peak = peak_memory(device)
    reset_peak(device)
    fast_t, fast_maps, _ = time_engine(fast, settings, images, args.batch, True, device)
    fast_peak = peak_memory(device)
    stage_s = time_masks_stage(sam, settings, images, args.batch, args.threads)

    identical = same_masks(stock_masks, exact_engine, images)
    stock_maps = [label_map_from_raw(stock_raw_masks(records, image), LabelMapRule()) for records, image in zip(stock_masks, images)]
    maps_equal = all(np.array_equal(a.label_map, b.label_map) for a, b in zip(stock_maps, exact_maps))
    grid = exact_engine.point_grids[0]
    ious = np.concatenate([
        prompt_mask_ious(SamSegmenter(sam), fast, image, torch.as_tensor(grid * np.array([[image.shape[1], image.shape[0]]])))
        for image in images
    ])
    agreement = np.mean([label_map_agreement(a.label_map, b.label_map) for a, b in zip(exact_maps, fast_maps)])
    survivors = sum(len(records) for records in stock_masks) / len(images)

    n = len(images)
    print(f"{sam_name(args)} {'checkpoint' if args.sam_checkpoint else 'random weights'}, {device}, {args.threads} CPU threads, {args.points_per_side}x{args.points_per_side} points, "
          f"{n} images {images[0].shape[1]}x{images[0].shape[0]}, batch {args.batch}{', compiled' if args.compile else ''}")
    print(f"realistic regime: pred_iou_thresh={threshold:.4f} keeps {args.keep:.0%} of {candidates} candidates/image, "
          f"stability filter off; {survivors:.1f} masks/image after NMS")
    print(f"{'':18}{'s/image':>9}{'encoder':>9}{'decoder':>9}{'rest':>8}{'speed-up':>10}{'after encoder':>15}{'after decoder':>15}   peak memory")
    for name, run, peak in (("stock AMG", stock, stock_peak), ("exact mode", exact_t, exact_peak), ("fast mode", fast_t, fast_peak)):
        rest = run.total - run.encoder - run.decoder
        stock_rest = stock.total - stock.encoder - stock.decoder
        print(f"{name:18}{run.total / n:9.3f}{run.encoder / n:9.3f}{run.decoder / n:9.3f}{rest / n:8.3f}{stock.total / run.total:9.2f}x"
              f"{(stock.total - stock.encoder) / (run.total - run.encoder):14.2f}x{stock_rest / max(rest, 1e-9):14.2f}x   {peak}")
    print(f"exact mode masks equal stock's mask for mask: {identical}; label maps equal: {maps_equal}")
    print(f"fast vs exact: per-prompt mask IoU median {np.median(ious):.4f}, 5th percentile {np.quantile(ious, 0.05):.4f} "
          f"({len(ious)} prompt outputs); label-map agreement {agreement:.4f}")
    print(f"masks stage (exact, decode+generate+encode+write): {n / stage_s:.3f} images/s = "
          f"{exact_t.total / stage_s:.0%} of the generator's own {n / exact_t.total:.3f} images/s")


# --- SAM 3 (`--sam3`): sam3's two modes beside sam exact mode, on the same images -----------------------------


def add_sam3_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SAM 3 (--sam3): s/image, masks and regions per image, peak memory")
    group.add_argument("--sam3", action="store_true", help="Compare sam3 points and concepts with sam exact mode (--model).")
    group.add_argument("--sam2", default="", help="Add a row for SAM 2.1 of this size (tiny, small, base_plus, large), random weights.")
    group.add_argument("--sam3-checkpoint", default="", help="sam3.pt (random weights at full size when empty).")
    group.add_argument("--sam3-small", action="store_true", help="SAM 3's builder at the tests' toy sizes (CPU runs).")
    group.add_argument("--prompts", default="", help="Concepts mode's prompts (default: the generator's).")
    group.add_argument("--confidence", type=float, default=0.5, help="Concepts mode's confidence threshold.")


def _sam3_network(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from pipeline.generators.sam_family.sam3.network import build_sam3, clip_vocabulary, load_sam3

    if args.sam3_checkpoint:
        return load_sam3(Path(args.sam3_checkpoint), clip_vocabulary(), device)
    if not args.sam3_small:
        return build_sam3(clip_vocabulary(), device)
    _tests_on_path()
    from random_sam3 import small_sam3_builder

    with small_sam3_builder():
        return build_sam3(clip_vocabulary(), device)


def _masks_per_image(generator, images: list[np.ndarray]) -> float:
    """Masks before the label map (untimed): the engine's (or SAM 2.1's generator's) survivors, or concept instances above the threshold."""
    if generator.name == "sam2":
        with torch.inference_mode():
            return float(np.mean([len(generator.amg.generate(image)) for image in images]))
    if generator.config.mode != "concepts":
        return float(np.mean([len(found.iou_preds) for found in generator.engine.masks(images)]))
    segmenter, config, counts = generator.segmenter, generator.config, []
    for image in images:
        (embedding,) = segmenter.embed([image])
        counts.append(sum(len(found.scores) for found in segmenter.concepts(embedding, config.prompt_list, config.confidence_threshold)))
    return float(np.mean(counts))


def _generator_row(name: str, generator, images: list[np.ndarray], device: torch.device) -> tuple:
    """(name, s/image, regions/image, peak memory, masks/image) of `regions_batch` and the rule in the generator's batch size."""

    def label_maps(batch):
        return [label_map_from_raw(raw, generator.rule) for raw in generator.regions_batch(batch, [str(index) for index in range(len(batch))])]

    label_maps(images[:1])  # loads the network and warms its kernels
    reset_peak(device)
    timer, results = Timer(device), []
    for start in range(0, len(images), generator.batch_size):
        results += timer.wrap(label_maps)(images[start : start + generator.batch_size])
    regions = float(np.mean([result.stats.num_regions for result in results]))
    return name, timer.seconds / len(images), regions, peak_memory(device), _masks_per_image(generator, images)


def _sam_row(args: argparse.Namespace, images: list[np.ndarray], device: torch.device) -> tuple:
    """sam exact mode in the realistic regime; its network is freed on return, before SAM 3's is built."""
    sam = sam_network(args, device)
    base = AmgSettings(points_per_side=args.points_per_side, stability_score_thresh=0.0)
    threshold, _ = realistic_iou_threshold(SamSegmenter(sam), images, base, args.keep)
    settings = {**vars(base), "pred_iou_thresh": threshold, "model": args.model}
    return _generator_row(f"sam {sam_name(args)} exact", SamGenerator(SamGenerator.Config(**settings), model=sam), images, device)


def sam21_iou_threshold(network: torch.nn.Module, images: list[np.ndarray], settings: AmgSettings, keep: float) -> float:
    """`realistic_iou_threshold` for SAM 2.1: its predictor's IoUs on the point grid, prompted as its own AMG does."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.amg import build_point_grid

    predictor, grid, predicted = SAM2ImagePredictor(network), build_point_grid(settings.points_per_side), []
    with torch.inference_mode():
        for image in images:
            predictor.set_image(image)
            points = torch.as_tensor(grid * np.array([[image.shape[1], image.shape[0]]]), dtype=torch.float32, device=predictor.device)
            for batch in points.split(settings.points_per_batch):
                prompts = predictor._transforms.transform_coords(batch, normalize=True, orig_hw=image.shape[:2])
                labels = torch.ones(len(prompts), dtype=torch.int, device=predictor.device)
                _, iou_preds, _ = predictor._predict(prompts[:, None, :], labels[:, None], multimask_output=True, return_logits=True)
                predicted.append(iou_preds.flatten().float().cpu())
    return float(np.quantile(torch.cat(predicted).numpy(), 1.0 - keep))


def _sam2_row(args: argparse.Namespace, images: list[np.ndarray], device: torch.device) -> tuple:
    """SAM 2.1 (`--sam2`, random weights) through the official automatic mask generator, in the realistic regime."""
    from pipeline.generators.sam_family.sam2.generator import Sam2Generator, build_sam21

    network = build_sam21(args.sam2, device)
    base = AmgSettings(points_per_side=args.points_per_side, stability_score_thresh=0.0)
    threshold = sam21_iou_threshold(network, images, base, args.keep)
    config = Sam2Generator.Config(**{**vars(base), "pred_iou_thresh": threshold, "model": args.sam2})
    return _generator_row(f"sam2.1 {args.sam2}", Sam2Generator(config, model=network), images, device)


def sam3_comparison(args: argparse.Namespace) -> None:
    """One table: sam exact, SAM 2.1 (`--sam2`), sam3 points, sam3 concepts on the same images (points: the realistic regime).

    Rows are printed as they are measured, so a time limit that stops a later generator keeps the earlier ones.
    """
    from pipeline.generators.sam_family.sam3.generator import Sam3Generator
    from pipeline.generators.sam_family.sam3.segmenter import Sam3Segmenter

    device = torch.device(args.device)
    images = load_images(args.images, args.images_dir)
    weights = "checkpoints" if args.sam_checkpoint and args.sam3_checkpoint else "random weights"
    print(f"{len(images)} images {images[0].shape[1]}x{images[0].shape[0]}, {device}, {args.threads} CPU threads, {weights}, "
          f"{args.points_per_side}x{args.points_per_side} points keeping {args.keep:.0%} by predicted IoU{', SAM 3 at toy sizes' if args.sam3_small else ''}{', toy sam' if args.sam_small else ''}")
    print(f"{'generator':<18}{'s/image':>9}{'regions/image':>15}{'masks/image':>13}   peak memory", flush=True)

    def print_row(name: str, seconds: float, regions: float, memory: str, masks: float) -> None:
        print(f"{name:<18}{seconds:9.2f}{regions:15.1f}{masks:13.1f}   {memory}", flush=True)

    print_row(*_sam_row(args, images, device))
    if args.sam2:
        print_row(*_sam2_row(args, images, device))
    sam3 = _sam3_network(args, device)
    base = AmgSettings(points_per_side=args.points_per_side, stability_score_thresh=0.0)
    threshold, _ = realistic_iou_threshold(Sam3Segmenter(sam3), images, base, args.keep)
    points = Sam3Generator.Config(**{**vars(base), "pred_iou_thresh": threshold})
    concepts = Sam3Generator.Config(mode="concepts", confidence_threshold=args.confidence, **({"prompts": args.prompts} if args.prompts else {}))
    for name, config in (("sam3 points", points), ("sam3 concepts", concepts)):
        print_row(*_generator_row(name, Sam3Generator(config, model=sam3), images, device))


if __name__ == "__main__":
    main()
