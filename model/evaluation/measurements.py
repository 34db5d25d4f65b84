"""The two ways of measuring one image: a real `.segpic` file, or the entropy estimate.

`coded` is the real thing: the image goes through `model.bitstream` into a `.segpic`
file on disk (portable mode) and is decoded back from that file; its rate `bpp` is the
file's stream payload (header excluded, as published rates and CompressAI count it: the
header names the model and image size, which a paper's bitstream does not carry); each
per-image row also gives `file_bpp`, counting every byte of the file. `entropy-estimation` runs one
forward pass and takes the rate from the likelihoods, like CompressAI's
`--entropy-estimation`; its encode and decode times are each half the forward pass.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel

from model.bitstream import CodecIdentity, SegpicFile, decode_file, encode_image, pad_to_multiple


@dataclass(frozen=True)
class Codec:
    """A loaded model with everything a measurement needs: identity for the file header, grid, device."""

    model: CompressionModel
    identity: CodecIdentity
    grid: int
    device: torch.device


@dataclass(frozen=True)
class Measured:
    """Rate, times and the reconstruction (1,C,H,W) of one image; byte counts only for real files."""

    bpp: float
    encoding_time: float
    decoding_time: float
    reconstruction: torch.Tensor
    file_bytes: int | None = None
    stream_bytes: int | None = None


def _timed(device: torch.device, work: Callable[[], Any]) -> tuple[Any, float]:
    """Run `work`, timing it to completion (device work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


class CodedMeasurement:
    """Encode to a real `.segpic` file at `bitstream`, decode from what is on disk."""

    name = "coded"
    description = "Inference (ans, .segpic files)"
    writes_files = True

    def measure(self, codec: Codec, x: torch.Tensor, bitstream: Path) -> Measured:
        data, encoding_time = _timed(codec.device, lambda: encode_image(codec.model, x, codec.identity, codec.grid))
        bitstream.write_bytes(data)
        stored = bitstream.read_bytes()
        reconstruction, decoding_time = _timed(
            codec.device, lambda: decode_file(codec.model, stored, codec.identity, source=str(bitstream))
        )
        coded = SegpicFile.from_bytes(stored, str(bitstream))
        stream_bytes = sum(len(stream) for stream in coded.streams)
        return Measured(coded.bits_per_pixel, encoding_time, decoding_time, reconstruction, len(stored), stream_bytes)


class EstimatedMeasurement:
    """One forward pass on the padded image; rate = -Σ log2(likelihoods) over the original pixels."""

    name = "entropy-estimation"
    description = "Inference (entropy estimation)"
    writes_files = False

    def measure(self, codec: Codec, x: torch.Tensor, bitstream: Path | None = None) -> Measured:
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x.expand(-1, 3, -1, -1)).to(codec.device)
        output, elapsed = _timed(codec.device, lambda: codec.model(padded, grid=codec.grid))
        bits = sum(torch.log(likelihoods).sum().item() for likelihoods in output["likelihoods"].values()) / -math.log(2)
        reconstruction = output["x_hat"][..., :height, :width].clamp(0, 1).cpu()
        if x.shape[1] == 1:
            reconstruction = reconstruction.mean(dim=1, keepdim=True)
        return Measured(bits / (height * width), elapsed / 2, elapsed / 2, reconstruction)


MEASUREMENTS: dict[str, CodedMeasurement | EstimatedMeasurement] = {
    measurement.name: measurement for measurement in (CodedMeasurement(), EstimatedMeasurement())
}
