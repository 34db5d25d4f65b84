"""SegPIC's fast kernels against the plain formulas of `model.plain`, measured in one run.

Prints, for each item, the plain and the fast figure and their ratio next to the target:
- DPSConv forward+backward time at the 1/4-scale training shape (2, 192, 64, 64), and its
  peak extra memory: the rise of the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) above the resident set once the inputs exist, measured in a fresh
  subprocess per variant with glibc's mmap threshold fixed at 64 KiB so that freed tensors
  leave the resident set at once instead of lingering in malloc's heap;
- masked average pooling forward+backward at 64 regions, batch 8, features (192, 64, 64),
  and prototype expansion the same way;
- one full training step of the published-size model (N=192, M=320) at 256×256 with SLIC
  label maps of real photographs: step time and peak memory of the published-cost reference
  (our network made as costly as the published code, see `training_step.py`), ours in fp32,
  under bf16 autocast and compiled; `--device cuda` runs it at batch 8 and 16 (under 5 minutes
  on one GPU), the CPU default is batch 2, each mode in a process of its own, their steps
  taken in turn so that all see the same load from the rest of the machine;
- compress + decompress of `--image` (default: the first sample photograph; Kodak's
  kodim01.png for the 768×512 case) with random weights after `update()`, plain = plain kernels + the published
  list-based y coder patched into `model.entropy_coding`, against our published-compatible
  mode, and portable mode (float64 entropy model) against published-compatible mode, on
  `--device` (the three in turn, best of three rounds, well under 5 minutes on cuda; `--only-codec` skips the rest),
  then the round trip: encode on `--device`, decode there and on the CPU (symbols, PSNR).
Run: `.venv/bin/python benchmarks/bench_model.py [--threads 1] [--image PATH] [--device cuda] [--only-training | --only-codec]`. One torch thread by
default, so ratios hold on a busy machine; more threads shrink the share of the network's
ordinary convolutions and raise the encode+decode ratio (1.14x with one thread, 1.22x with
two on a 2-core CPU).
"""

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.segmentation import slic

import training_step
from model import entropy_coding, plain, rat
from model.architectures import build_model
from pipeline.sample import sample_photo_paths

DPS_SHAPE = (2, 192, 64, 64)
POOL_SHAPE, POOL_REGIONS = (8, 192, 64, 64), 64
TRAIN_SIZE = 256
MIN_TRAIN_SIZE = 192
TRAIN_BATCHES = {"cuda": [8, 16], "cpu": [2]}
FIXED_MMAP_THRESHOLD = "65536"
KERNEL_NAMES = ("dps_conv", "masked_average_pool", "expand_prototypes")
CODER_NAMES = ("build_indexes", "encode_symbols", "decode_symbols")
CODEC_MODES = ("plain", "fast", "portable")
PUBLISHED_WIDTHS = {"N": 192, "M": 320}
SMOKE_WIDTHS = {"N": 24, "M": 40}  # the tiny preset's: `--smoke` checks that the script runs, it measures nothing


@contextlib.contextmanager
def plain_kernels(with_coder: bool = False) -> Iterator[None]:
    """Swap the plain formulas into `model.rat` (and the published y coder into entropy coding)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.multiple(rat, **{name: getattr(plain, name) for name in KERNEL_NAMES}))
        if with_coder:
            stack.enter_context(
                mock.patch.multiple(entropy_coding, **{name: getattr(plain, name) for name in CODER_NAMES})
            )
            stack.enter_context(
                mock.patch.object(entropy_coding.ChannelAutoregressiveCodec, "rans_tables", plain.rans_tables)
            )
        yield


def best_time(action: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def dps_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch, channels, height, width = DPS_SHAPE
    u = torch.randn(DPS_SHAPE, generator=generator, requires_grad=True)
    kernels = torch.randn(batch, channels, 9, height, width, generator=generator, requires_grad=True)
    return u, kernels, torch.randn(DPS_SHAPE, generator=generator)


def dps_step(dps_conv: Callable, u: torch.Tensor, kernels: torch.Tensor, grad: torch.Tensor) -> None:
    u.grad = kernels.grad = None
    dps_conv(u, kernels, 3).backward(grad)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def probe_dps_memory(variant: str) -> int:
    """Peak extra bytes of one DPSConv forward+backward in this process (run in a child)."""
    torch.set_num_threads(1)
    u, kernels, grad = dps_inputs()
    dps_conv = plain.dps_conv if variant == "plain" else rat.dps_conv
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    dps_step(dps_conv, u, kernels, grad)
    return (_status_kib("VmHWM") - before) * 1024


def dps_extra_memory(variant: str) -> int:
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": FIXED_MMAP_THRESHOLD}
    result = subprocess.run(
        [sys.executable, __file__, "--probe-dps-memory", variant],
        env=environment, capture_output=True, text=True, check=True,
    )
    return int(result.stdout.split()[-1])


def pooling_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    batch, _, height, width = POOL_SHAPE
    features = torch.randn(POOL_SHAPE, generator=generator, requires_grad=True)
    return features, torch.randint(0, POOL_REGIONS, (batch, height, width), generator=generator)


def pool_step(module, features: torch.Tensor, labels: torch.Tensor) -> None:
    features.grad = None
    prototypes, _ = module.masked_average_pool(features, labels)
    prototypes.sum().backward()


def expand_step(module, table: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor) -> None:
    table.grad = None
    module.expand_prototypes(table, counts, labels).sum().backward()


def photo_batch(size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre crops of sample photographs and SLIC label maps of them (about 64 regions), cycling the photos."""
    images, label_maps = [], []
    photos = sample_photo_paths()
    for path in (photos[i % len(photos)] for i in range(count)):
        photo = Image.open(path).convert("RGB")
        side = min(photo.size)
        left, top = (photo.width - side) // 2, (photo.height - side) // 2
        pixels = np.asarray(photo.crop((left, top, left + side, top + side)).resize((size, size)))
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255)
        label_maps.append(torch.from_numpy(slic(pixels, n_segments=64, start_label=0).astype(np.int64)))
    return torch.stack(images), torch.stack(label_maps)


def cpu_training_peak(mode: training_step.Mode, size: int, batch: int) -> int:
    """Peak extra resident memory of one training step, in a child whose frees reach the OS at once.

    Timing stays in this process: the low mmap threshold that makes the resident set follow
    the live tensors also makes every allocation a system call.
    """
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": FIXED_MMAP_THRESHOLD}
    command = [sys.executable, __file__, "--probe-training-memory", mode.name, "--train-size", str(size),
               "--train-batch", str(batch)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


def probe_training_memory(name: str, size: int, batch: int) -> int:
    torch.set_num_threads(1)
    mode = mode_named(name)
    return training_step.measure(mode, photo_batch(size, batch), torch.device("cpu"), repeats=1).peak_bytes


def codec_image(path: Path) -> tuple[torch.Tensor, str]:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[0] // 64 * 64, pixels.shape[1] // 64 * 64
    image = torch.from_numpy(pixels[:height, :width].copy()).permute(2, 0, 1)[None].float() / 255
    return image, f"{path.name} {width}x{height}"


@contextlib.contextmanager
def stopwatch(targets: list[tuple[object, str]]) -> Iterator[list[float]]:
    """Accumulate, in the yielded one-element list, the seconds spent inside the named functions."""
    total = [0.0]

    def timed(function: Callable) -> Callable:
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - start

        return run

    with contextlib.ExitStack() as stack:
        for owner, name in targets:
            stack.enter_context(mock.patch.object(owner, name, timed(getattr(owner, name))))
        yield total


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def codec_time(model, image: torch.Tensor, use_plain: bool, portable: bool = False) -> tuple[float, float, list]:
    """Seconds for compress + decompress, seconds of it inside the swapped functions, the streams."""
    swapped = [(rat, "dps_conv"), (entropy_coding.ChannelAutoregressiveCodec, "rans_tables")]
    swapped += [(entropy_coding, name) for name in CODER_NAMES]
    variant = plain_kernels(with_coder=True) if use_plain else contextlib.nullcontext()
    with variant, stopwatch(swapped) as inside:
        synchronize(image.device)
        start = time.perf_counter()
        compressed = model.compress(image, portable=portable)
        model.decompress(compressed["strings"], compressed["shape"], portable=portable)
        synchronize(image.device)
        return time.perf_counter() - start, inside[0], compressed["strings"]


def report(name: str, plain_value: float, fast_value: float, unit: str, target: str) -> None:
    ratio = plain_value / fast_value
    print(
        f"{name:<45} plain {plain_value:10.4f} {unit:<3} fast {fast_value:10.4f} {unit:<3} "
        f"ratio {ratio:7.2f}x  (target {target})"
    )


def bench_dps_conv() -> None:
    u, kernels, grad = dps_inputs()
    report(
        "DPSConv fwd+bwd time (2,192,64,64)",
        best_time(lambda: dps_step(plain.dps_conv, u, kernels, grad), 3),
        best_time(lambda: dps_step(rat.dps_conv, u, kernels, grad), 5),
        "s", ">=4x",
    )
    report(
        "DPSConv fwd+bwd peak extra memory",
        dps_extra_memory("plain") / 2**20, dps_extra_memory("fast") / 2**20, "MiB", "plain/fast >=3x",
    )


def bench_pooling() -> None:
    features, labels = pooling_inputs()
    report(
        "pooling fwd+bwd, 64 regions, batch 8",
        best_time(lambda: pool_step(plain, features, labels), 1),
        best_time(lambda: pool_step(rat, features, labels), 5),
        "s", ">=30x",
    )
    prototypes, counts = rat.masked_average_pool(features.detach(), labels)
    table = prototypes.requires_grad_()
    report(
        "expansion fwd+bwd, 64 regions, batch 8",
        best_time(lambda: expand_step(plain, table, counts, labels), 1),
        best_time(lambda: expand_step(rat, table, counts, labels), 5),
        "s", "-",
    )


def serve_training_steps(name: str, size: int, batch: int) -> None:
    """Child of `interleaved_cpu_steps`: one training step per line read, answering its CPU seconds and loss."""
    torch.set_num_threads(1)
    mode = mode_named(name)
    with training_step.published_cost() if mode.published else contextlib.nullcontext():
        step = training_step.step_function(mode, photo_batch(size, batch), torch.device("cpu"))
        print("ready", flush=True)
        for _ in sys.stdin:
            start = time.process_time()
            loss = step()
            print(time.process_time() - start, float(loss), flush=True)


def interleaved_cpu_steps(modes: list[training_step.Mode], size: int, batch: int, repeats: int) -> dict:
    """Best CPU seconds and last loss of each mode, one process per mode, their steps taken in turn.

    Each mode keeps its own allocator state (ours keep freed memory in the heap, the reference
    has glibc's defaults), and taking the steps round by round, after two warm-up rounds, puts
    every mode under the same load from the other processes of a shared machine.
    """
    command = [sys.executable, __file__, "--train-size", str(size), "--train-batch", str(batch), "--serve-training-steps"]
    children = {
        mode: subprocess.Popen([*command, mode.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for mode in modes
    }
    results: dict = {mode: [] for mode in modes}
    try:
        for child in children.values():
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"training-step child {child.args} failed to start")
        for _ in range(2 + repeats):
            for mode, child in children.items():
                child.stdin.write("step\n")
                child.stdin.flush()
                seconds, loss = child.stdout.readline().split()
                results[mode].append((float(seconds), float(loss)))
    finally:
        for child in children.values():
            child.stdin.close()
            child.wait()
    return {mode: (min(seconds for seconds, _ in steps[2:]), steps[-1][1]) for mode, steps in results.items()}


def bench_training_step(device: torch.device, batches: list[int], size: int, repeats: int, compiled: bool, smoke: bool = False) -> None:
    """Step time and peak memory of each mode of `training_step` (see there for the reference), row by row.

    On a CPU the modes run in turn in processes of their own (`interleaved_cpu_steps`), and the
    peak memory in one more per mode (`cpu_training_peak`); a smoke run (toy widths) times them
    here, as on a GPU. Rows are printed as they are measured, so a time limit that stops the
    compiled mode keeps the others.
    """
    modes = [mode for mode in training_step.MODES if compiled or not mode.compile]
    widths = SMOKE_WIDTHS if smoke else PUBLISHED_WIDTHS
    print(f"training step, N={widths['N']} M={widths['M']}, {size}x{size}, SLIC masks, on {device} (target >=1.3x on CPU)")
    training_step.print_header()
    for batch in batches:
        if device.type == "cpu" and not smoke:
            best = interleaved_cpu_steps(modes, size, batch, repeats)
            measurements = []
            for mode in modes:
                seconds, loss = best[mode]
                measurements.append(training_step.Measurement(mode, batch, seconds, cpu_training_peak(mode, size, batch), loss))
        else:
            images_and_labels = photo_batch(size, batch)
            measurements = (training_step.measure(mode, images_and_labels, device, repeats, widths) for mode in modes)
        reference = None
        for measurement in measurements:
            reference = reference or measurement
            training_step.print_row(measurement, reference)


def mode_named(name: str) -> training_step.Mode:
    return next(mode for mode in training_step.MODES if mode.name == name)


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(-10 * torch.log10(F.mse_loss(x_hat.clamp(0, 1).cpu(), x.cpu())))


@dataclass(frozen=True)
class RoundTrip:
    """One coding mode's round trip: encoded on `device`, decoded there and on a CPU copy of the model."""

    mode: str
    device: str
    symbols_identical: bool  # the symbol checksums of the encoder and both decoders agree
    psnr_here: float
    psnr_cpu: float

    @property
    def difference(self) -> float:
        return abs(self.psnr_here - self.psnr_cpu)

    def line(self) -> str:
        """The printed row (`gpu_tables.py` reads it back from the log)."""
        return (
            f"{self.mode} round trip {self.device} -> {self.device}/cpu: symbols identical {self.symbols_identical}, "
            f"PSNR {self.psnr_here:.4f} / {self.psnr_cpu:.4f} dB (difference {self.difference:.4f} dB, target <=0.01 dB)"
        )


def cross_device_round_trip(model, image: torch.Tensor) -> list[RoundTrip]:
    """Encode on the model's device; decode there and on a CPU copy. Portable mode must give the
    same symbols (checksums) and pictures within 0.01 dB; published-compatible mode may not."""
    cpu_model = copy.deepcopy(model).cpu()
    trips = []
    for portable in (True, False):
        coded = model.compress(image, portable=portable)
        here = model.decompress(coded["strings"], coded["shape"], portable=portable)
        on_cpu = cpu_model.decompress(coded["strings"], coded["shape"], portable=portable)
        same = coded["symbol_checksums"] == here["symbol_checksums"] == on_cpu["symbol_checksums"]
        mode = "portable" if portable else "published-compatible"
        trips.append(RoundTrip(mode, str(image.device), same, psnr(image, here["x_hat"]), psnr(image, on_cpu["x_hat"])))
    return trips


def bench_codec(image_path: Path, device: torch.device, smoke: bool = False) -> None:
    torch.manual_seed(3)
    model = build_model("segpic", **(SMOKE_WIDTHS if smoke else PUBLISHED_WIDTHS)).eval()
    model.update()
    model.to(device)
    image, description = codec_image(image_path)
    image = image.to(device)
    repeats = 3
    for portable in (False, True):  # warm-up: allocator, kernels, the portable twin's float64 copies
        codec_time(model, image, use_plain=False, portable=portable)
    # Modes take turns, so that a change in the machine's load falls on all three alike.
    rounds = [
        [codec_time(model, image, use_plain=mode == "plain", portable=mode == "portable") for mode in CODEC_MODES]
        for _ in range(repeats)
    ]
    plain_runs, fast_runs, portable_runs = zip(*rounds)
    print(f"codec on {device}, best of {repeats} run(s); fast = our published-compatible mode")
    for column, name, target in ((0, f"encode+decode {description}", ">=2x"), (1, "  of it in DPSConv + y coder", "-")):
        report(name, min(run[column] for run in plain_runs), min(run[column] for run in fast_runs), "s", target)
    print(f"identical streams from plain and fast coding: {plain_runs[0][2] == fast_runs[0][2]}")
    published, portable = min(run[0] for run in fast_runs), min(run[0] for run in portable_runs)
    print(
        f"{'encode+decode, portable mode':<45} {portable:10.4f} s   = {portable / published:5.2f}x "
        f"published-compatible mode (target <=1.25x)"
    )
    for trip in cross_device_round_trip(model, image):
        print(trip.line())


def main(
    threads: int,
    device: torch.device,
    image: Path,
    training: tuple[list[int], int, int, bool] | None,
    codec: bool,
    smoke: bool = False,
) -> None:
    """`training` = (batches, size, repeats, compiled) of the training-step table, or None to skip it."""
    torch.set_num_threads(threads)
    if training is not None and codec:
        bench_dps_conv()
        bench_pooling()
    if training is not None:
        bench_training_step(device, *training, smoke)
    if codec:
        bench_codec(image, device, smoke)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the timed parts")
    parser.add_argument("--image", type=Path, default=sample_photo_paths()[0], help="image to code (cropped to 64s)")
    parser.add_argument("--device", default="cpu", help="device of the training-step table and the codec: cpu or cuda")
    parser.add_argument("--only-codec", action="store_true", help="run the codec benchmark alone")
    parser.add_argument("--probe-dps-memory", choices=("plain", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-training-memory", help=argparse.SUPPRESS)
    parser.add_argument("--serve-training-steps", help=argparse.SUPPRESS)
    parser.add_argument("--train-batch", type=int, nargs="+", default=None,
                        help=f"training-step batch sizes (default {TRAIN_BATCHES['cuda']} on cuda, {TRAIN_BATCHES['cpu']} on cpu)")
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="training crop side")
    parser.add_argument("--train-repeats", type=int, default=None, help="timed steps per mode (best is kept)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include the compiled mode (default: on cuda only; compiling on a CPU takes many minutes)")
    parser.add_argument("--only-training", action="store_true", help="print the training-step table only")
    parser.add_argument("--smoke", action="store_true",
                        help=f"toy widths {SMOKE_WIDTHS} and the training modes timed in one process: checks that the script runs, measures nothing")
    arguments = parser.parse_args()
    if arguments.probe_dps_memory:
        print(probe_dps_memory(arguments.probe_dps_memory))
    elif arguments.probe_training_memory:
        print(probe_training_memory(arguments.probe_training_memory, arguments.train_size, arguments.train_batch[0]))
    elif arguments.serve_training_steps:
        serve_training_steps(arguments.serve_training_steps, arguments.train_size, arguments.train_batch[0])
    else:
        if arguments.train_size % 64 or arguments.train_size < MIN_TRAIN_SIZE:
            parser.error(f"--train-size must be a multiple of 64 of at least {MIN_TRAIN_SIZE} (MS-SSIM's 4 downsamplings)")
        device = torch.device(arguments.device)
        training = (
            arguments.train_batch or TRAIN_BATCHES[device.type],
            arguments.train_size,
            arguments.train_repeats or (10 if device.type == "cuda" else 3),
            device.type == "cuda" if arguments.compile is None else arguments.compile,
        )
        main(
            arguments.threads,
            device,
            arguments.image,
            None if arguments.only_codec else training,
            not arguments.only_training,
            arguments.smoke,
        )
