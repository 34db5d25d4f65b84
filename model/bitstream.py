"""The `.segpic` file: one coded image, self-describing enough to refuse the wrong decoder.

Layout, little-endian, format version 1:

    magic     6 bytes   b"SEGPIC"
    version   u8        FORMAT_VERSION
    arch      u8 n + n bytes UTF-8     registry name (`model.architectures`)
    N, M      u16, u16                  widths
    weights   u8 n + n bytes ASCII      `model.checkpoints.weights_hash` of the encoder
    grid      u8        prototype grid g the encoder used
    height    u32       original image size, before padding
    width     u32
    channels  u8        1 for a grayscale source, 3 for colour
    streams   u8 count, then per stream u32 length + bytes, in the model's order
              (SegPIC: y, z, 1/4-scale prototypes, 1/16-scale prototypes; WACNN: y, z)
    crc32     u32       of everything above

Every length is checked against the data before anything reaches the entropy decoder
(which does no bounds checking of its own), and the CRC turns a flipped bit into a clear
error instead of a garbage picture. Images whose sides are not multiples of 64 are padded
on the bottom and right by edge replication (a hard zero border costs bits for pixels
nobody sees) and cropped back after decoding. A grayscale image is coded as three equal
channels and decoded back to one channel, the mean of the three decoded ones.
"""

import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from PIL import Image, UnidentifiedImageError

from model.architectures import architecture_name
from model.checkpoints import load_codec, weights_hash
from model.entropy_coding import LATENT_DOWNSAMPLING

MAGIC = b"SEGPIC"
FORMAT_VERSION = 1
PAD_MULTIPLE = LATENT_DOWNSAMPLING
MAX_SIDE = 1 << 15
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


class SegpicFileError(ValueError):
    """A `.segpic` file that cannot be decoded: truncated, corrupted or of another format."""


class ModelMismatchError(SegpicFileError):
    """The file was written by a different model from the one asked to decode it."""


@dataclass(frozen=True)
class CodecIdentity:
    """What a decoder must match: architecture, widths and the exact weights."""

    arch: str
    N: int
    M: int
    weights_hash: str

    @classmethod
    def of(cls, model: CompressionModel) -> "CodecIdentity":
        return cls(architecture_name(model), model.N, model.M, weights_hash(model))

    def describe(self) -> str:
        return f"{self.arch} N={self.N} M={self.M} weights {self.weights_hash[:16]}"


@dataclass(frozen=True)
class SegpicFile:
    """The decoded header and streams of one `.segpic` file."""

    identity: CodecIdentity
    grid: int
    height: int
    width: int
    channels: int
    streams: tuple[bytes, ...]

    @property
    def bits_per_pixel(self) -> float:
        """Rate of the image: all streams, header excluded, over the original pixel count."""
        return 8 * sum(len(stream) for stream in self.streams) / (self.height * self.width)

    def to_bytes(self) -> bytes:
        arch = self.identity.arch.encode("utf-8")
        digest = self.identity.weights_hash.encode("ascii")
        parts = [
            MAGIC,
            struct.pack("<BB", FORMAT_VERSION, len(arch)),
            arch,
            struct.pack("<HHB", self.identity.N, self.identity.M, len(digest)),
            digest,
            struct.pack("<BIIBB", self.grid, self.height, self.width, self.channels, len(self.streams)),
        ]
        for stream in self.streams:
            parts += [struct.pack("<I", len(stream)), stream]
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "SegpicFile":
        """Parse and validate; raises SegpicFileError naming `source` on any inconsistency."""
        if data[: len(MAGIC)] != MAGIC:
            raise SegpicFileError(f"{source}: not a .segpic file (bad magic)")
        if len(data) < len(MAGIC) + 5 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise SegpicFileError(f"{source}: truncated or corrupted .segpic file (checksum mismatch)")
        reader = _Reader(data[:-4], source)
        reader.skip(len(MAGIC))
        (version,) = reader.unpack("<B", "version")
        if version != FORMAT_VERSION:
            raise SegpicFileError(f"{source}: .segpic format version {version}, this reader knows {FORMAT_VERSION}")
        arch = reader.take(reader.unpack("<B", "architecture")[0], "architecture").decode("utf-8", "replace")
        N, M, digest_length = reader.unpack("<HHB", "widths")
        digest = reader.take(digest_length, "weights hash").decode("ascii", "replace")
        grid, height, width, channels, count = reader.unpack("<BIIBB", "image header")
        streams = tuple(reader.take(reader.unpack("<I", "stream length")[0], "stream") for _ in range(count))
        reader.expect_end()
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or channels not in (1, 3) or grid < 1:
            raise SegpicFileError(f"{source}: invalid image header {height}x{width}x{channels}, grid {grid}")
        return cls(CodecIdentity(arch, N, M, digest), grid, height, width, channels, streams)


class _Reader:
    """Bounds-checked cursor over a byte string."""

    def __init__(self, data: bytes, source: str):
        self.data, self.position, self.source = data, 0, source

    def take(self, length: int, what: str) -> bytes:
        end = self.position + length
        if end > len(self.data):
            raise SegpicFileError(f"{self.source}: truncated .segpic file (in the {what})")
        chunk, self.position = self.data[self.position : end], end
        return chunk

    def skip(self, length: int) -> None:
        self.take(length, "header")

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def expect_end(self) -> None:
        if self.position != len(self.data):
            raise SegpicFileError(f"{self.source}: {len(self.data) - self.position} unexpected bytes after the streams")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(1,C,H,W) float32 in [0,1]; C = 1 for grayscale images, 3 otherwise (alpha dropped)."""
    gray = image.mode in GRAYSCALE_MODES
    pixels = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels)
    return tensor[None, None] if gray else tensor.permute(2, 0, 1)[None]


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """(1,C,H,W) in [0,1] -> 8-bit PIL image ("L" for C = 1, "RGB" for C = 3)."""
    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate the last row/column until H and W are multiples of `multiple`."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="replicate")


def encode_image(model: CompressionModel, image: Image.Image | torch.Tensor, identity: CodecIdentity, grid: int = 4) -> bytes:
    """Code one image (PIL, or a (1,C,H,W)/(C,H,W) tensor in [0,1] with C in {1,3}) to `.segpic` bytes."""
    x = image_to_tensor(image) if isinstance(image, Image.Image) else image
    x = x[None] if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected one image of 1 or 3 channels, got a tensor of shape {tuple(x.shape)}")
    if not 1 <= grid <= 255:
        raise ValueError(f"grid must be between 1 and 255, got {grid}")
    channels, height, width = x.shape[1:]
    if max(height, width) > MAX_SIDE:
        raise ValueError(f"image {height}x{width} is larger than {MAX_SIDE} pixels on a side")
    device = next(model.parameters()).device
    strings = model.compress(pad_to_multiple(x.expand(-1, 3, -1, -1)).to(device), grid=grid)["strings"]
    streams = tuple(image_strings[0] for image_strings in strings)
    return SegpicFile(identity, grid, height, width, channels, streams).to_bytes()


def decode_file(model: CompressionModel, data: bytes, identity: CodecIdentity, source: str = "<bytes>") -> torch.Tensor:
    """The reconstruction (1,C,H,W) in [0,1] on the CPU, at the original size and channel count."""
    coded = SegpicFile.from_bytes(data, source)
    if coded.identity != identity:
        raise ModelMismatchError(
            f"{source} was written by {coded.identity.describe()}, "
            f"but the decoding model is {identity.describe()}"
        )
    if len(coded.streams) != len(model.stream_names):
        raise SegpicFileError(
            f"{source}: {len(coded.streams)} streams, but {identity.arch} writes {len(model.stream_names)} "
            f"({', '.join(model.stream_names)})"
        )
    shape = (-(-coded.height // PAD_MULTIPLE), -(-coded.width // PAD_MULTIPLE))
    x_hat = model.decompress([[stream] for stream in coded.streams], shape, grid=coded.grid)["x_hat"]
    x_hat = x_hat[..., : coded.height, : coded.width].clamp(0, 1).cpu()
    return x_hat.mean(dim=1, keepdim=True) if coded.channels == 1 else x_hat


@dataclass(frozen=True)
class CompressConfig:
    image: Path
    checkpoint: Path
    output: Path
    grid: int = 4


@dataclass(frozen=True)
class DecompressConfig:
    segpic_file: Path
    checkpoint: Path
    output: Path


@dataclass(frozen=True)
class CodingReport:
    """What one compress/decompress call did: sizes, rate and coding time (model loading excluded)."""

    output: Path
    height: int
    width: int
    file_bytes: int
    bits_per_pixel: float
    seconds: float


def _write_atomically(path: Path, write) -> None:
    partial = path.with_name(path.name + ".incomplete")
    write(partial)
    partial.replace(path)


def compress_image_file(config: CompressConfig) -> CodingReport:
    """Image file -> `.segpic` file, with the codec from `config.checkpoint`."""
    try:
        with Image.open(config.image) as opened:
            x = image_to_tensor(opened)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{config.image}: cannot read the image ({error})") from error
    model = load_codec(config.checkpoint)
    started = time.perf_counter()
    data = encode_image(model, x, CodecIdentity.of(model), grid=config.grid)
    seconds = time.perf_counter() - started
    _write_atomically(config.output, lambda path: path.write_bytes(data))
    coded = SegpicFile.from_bytes(data, str(config.output))
    return CodingReport(config.output, coded.height, coded.width, len(data), coded.bits_per_pixel, seconds)


def decompress_image_file(config: DecompressConfig) -> CodingReport:
    """`.segpic` file -> image file (format from the output suffix, e.g. PNG)."""
    try:
        data = config.segpic_file.read_bytes()
    except OSError as error:
        raise ValueError(f"{config.segpic_file}: cannot read the file ({error})") from error
    coded = SegpicFile.from_bytes(data, str(config.segpic_file))
    model = load_codec(config.checkpoint)
    started = time.perf_counter()
    x_hat = decode_file(model, data, CodecIdentity.of(model), source=str(config.segpic_file))
    seconds = time.perf_counter() - started
    image_format = Image.registered_extensions().get(config.output.suffix.lower())
    if image_format is None:
        raise ValueError(f"{config.output}: unknown image format {config.output.suffix!r}")
    _write_atomically(config.output, lambda path: tensor_to_image(x_hat).save(path, format=image_format))
    return CodingReport(config.output, coded.height, coded.width, len(data), coded.bits_per_pixel, seconds)
