"""`segpic eval`: every checkpoint on every image, written as one results JSON.

The JSON follows CompressAI's `eval_model` output so its tools (and ours) read it:
`{"name", "description", "results": {"psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time",
"decoding_time"}}` with one value per checkpoint (the mean over images, one RD point per
checkpoint), plus `checkpoints` (what each point was measured with, and the λ it was
trained at where the checkpoint records one), `image_set` (what the images are, for plot
titles) and `per_image` (one row per checkpoint and image, which BD intervals resample). MS-SSIM is null for images under 161 pixels on a
side (too small for its five scales) and averaged over the images that have it.
"""

import json
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.bitstream import CodecIdentity, tensor_to_image
from model.checkpoints import codec_from_checkpoint, trained_lambda
from model.evaluation.images import EvalImage, collect_images, describe_image_set
from model.evaluation.measurements import MEASUREMENTS, Codec, Measured
from model.evaluation.quality import ms_ssim_value, psnr
from pipeline.torch_files import read_torch_file
from pipeline.atomic_files import write_json_atomically

RESULTS_FORMAT = "segpic-eval"
RESULTS_FORMAT_VERSION = 1
AVERAGED_METRICS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")


@dataclass(frozen=True)
class EvalConfig:
    """What `segpic eval` does; `bitstreams`/`reconstructions` keep files (else bitstreams go to a temporary folder)."""

    checkpoints: tuple[Path, ...]
    images: Path
    out: Path
    name: str | None = None
    entropy_estimation: bool = False
    reconstructions: Path | None = None
    bitstreams: Path | None = None
    grid: int = 4
    device: str = "cpu"

    @property
    def measurement(self) -> str:
        return "entropy-estimation" if self.entropy_estimation else "coded"


def run_labels(checkpoints: Sequence[Path]) -> list[str]:
    """Short unique folder names for checkpoints: their paths below the common parent, suffix dropped.

    When every checkpoint has the same file name (`sam/0.0018/checkpoint.pt`, ...), the
    folders alone tell them apart and the name is dropped too (`0.0018`).
    """
    resolved = [Path(os.path.abspath(path)) for path in checkpoints]
    if len(set(resolved)) != len(resolved):
        raise ValueError("the same checkpoint is listed twice")
    if len(resolved) == 1:
        return [resolved[0].stem]
    same_name = len({path.name for path in resolved}) == 1
    keys = [path.parent if same_name else path.with_suffix("") for path in resolved]
    common = Path(os.path.commonpath([path.parent for path in keys]))
    return [key.relative_to(common).as_posix().replace("/", "-") for key in keys]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def _image_row(checkpoint: Path, image: EvalImage, x: torch.Tensor, measured: Measured) -> dict[str, Any]:
    return {
        "checkpoint": str(checkpoint),
        "image": image.name,
        "height": int(x.shape[-2]),
        "width": int(x.shape[-1]),
        "psnr-rgb": psnr(x, measured.reconstruction),
        "ms-ssim-rgb": ms_ssim_value(x, measured.reconstruction),
        "bpp": measured.bpp,
        "encoding_time": measured.encoding_time,
        "decoding_time": measured.decoding_time,
        "file_bytes": measured.file_bytes,
        "file_bpp": None if measured.file_bytes is None else 8 * measured.file_bytes / (x.shape[-2] * x.shape[-1]),
        "stream_bytes": measured.stream_bytes,
    }


@torch.no_grad()
def evaluate_checkpoint(
    config: EvalConfig,
    checkpoint: Path,
    label: str,
    images: Sequence[EvalImage],
    bitstream_dir: Path,
    progress: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure one checkpoint on every image: (its description, its per-image rows)."""
    stored = read_torch_file(checkpoint)
    model = codec_from_checkpoint(stored, str(checkpoint), device=config.device)
    identity = CodecIdentity.of(model)
    codec = Codec(model, identity, config.grid, torch.device(config.device))
    measurement = MEASUREMENTS[config.measurement]
    run_dir = bitstream_dir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image in images:
        x = image.tensor()
        measured = measurement.measure(codec, x, run_dir / f"{image.file_stem}.segpic")
        if config.reconstructions is not None:
            folder = config.reconstructions / label
            folder.mkdir(parents=True, exist_ok=True)
            tensor_to_image(measured.reconstruction).save(folder / f"{image.file_stem}.png")
        rows.append(_image_row(checkpoint, image, x, measured))
        progress(f"{label} {image.name}: {rows[-1]['bpp']:.4f} bpp, {rows[-1]['psnr-rgb']:.2f} dB")
    description = {"path": str(checkpoint), "label": label, "arch": identity.arch, "N": identity.N,
                   "M": identity.M, "lmbda": trained_lambda(stored), "weights_hash": identity.weights_hash}
    return description, rows


def evaluate(config: EvalConfig, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Evaluate every checkpoint on every image, write `config.out` and return its contents."""
    if not config.checkpoints:
        raise ValueError("no checkpoints to evaluate")
    missing = [str(path) for path in config.checkpoints if not Path(path).is_file()]
    if missing:
        raise ValueError(f"no such checkpoint: {', '.join(missing)}")
    if not 1 <= config.grid <= 255:
        raise ValueError(f"grid must be between 1 and 255, got {config.grid}")
    images = collect_images(config.images)
    labels = run_labels(config.checkpoints)
    measurement = MEASUREMENTS[config.measurement]
    checkpoints, rows = [], []
    with tempfile.TemporaryDirectory(prefix="segpic-eval-") as scratch:
        bitstream_dir = Path(config.bitstreams) if config.bitstreams and measurement.writes_files else Path(scratch)
        for checkpoint, label in zip(config.checkpoints, labels):
            description, checkpoint_rows = evaluate_checkpoint(
                config, Path(checkpoint), label, images, bitstream_dir, progress
            )
            checkpoints.append(description)
            rows.extend(checkpoint_rows)
    results = {
        metric: [_mean([row[metric] for row in rows if row["checkpoint"] == entry["path"]]) for entry in checkpoints]
        for metric in AVERAGED_METRICS
    }
    document = {
        "name": config.name or Path(config.out).stem,
        "description": measurement.description,
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "images": str(config.images),
        "image_set": describe_image_set(Path(config.images)),
        "image_count": len(images),
        "grid": config.grid,
        "checkpoints": checkpoints,
        "results": results,
        "per_image": rows,
    }
    write_json_atomically(Path(config.out), document)
    return document
