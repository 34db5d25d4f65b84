"""The `.segpic` file: one coded image, self-describing enough to refuse the wrong decoder.

Layout, little-endian, format version 2:

    magic     6 bytes   b"SEGPIC"
    version   u8        FORMAT_VERSION
    mode      u8        0 published-compatible, 1 portable (`model.portable`)
    arch      u8 n + n bytes UTF-8     registry name (`model.architectures`)
    N, M      u16, u16                  widths
    weights   u8 n + n bytes ASCII      `model.checkpoints.weights_hash` of the encoder
    grid      u8        prototype grid g the encoder used
    height    u32       original image size, before padding
    width     u32
    channels  u8        1 for a grayscale source, 3 for colour
    symbols   u32       CRC32 of the coded symbols of every stream (desync detection)
    streams   u8 count, then per stream u32 length + bytes, in the model's order
              (SegPIC: y, z, 1/4-scale prototypes, 1/16-scale prototypes; WACNN: y, z)
    crc32     u32       of everything above

Version 1 files (no mode, no symbol checksum: published-compatible) are still read.

Every length is checked against the data, and the header against the model and the limits
(pixel count, grid, the stream lengths the size implies) before anything is allocated or
reaches the entropy decoder. That decoder (CompressAI's rANS) does no bounds checking, so
each stream is handed over followed by zero bytes enough for the reads its symbol count and
length allow. The CRC turns a flipped bit into a clear error instead of a garbage picture,
and the symbol checksum turns a decoder that reproduces other symbols (other numerics, or a
crafted file) into a clear error as well. Images whose sides are not multiples of 64 are
padded on the bottom and right by edge replication (a hard zero border costs bits for pixels
nobody sees) and cropped back after decoding. A grayscale image is coded as three equal
channels and decoded back to one channel, the mean of the three decoded ones.
"""

import math
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from PIL import Image

from model.architectures import architecture_name
from model.checkpoints import load_codec, weights_hash
from model.devices import resolve_device
from model.entropy_coding import LATENT_DOWNSAMPLING
from pipeline.atomic_files import atomic_output, write_bytes_atomically
from pipeline.images import ImageRejected, normalize_image, read_image

MAGIC = b"SEGPIC"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PUBLISHED_MODE, PORTABLE_MODE = 0, 1
PAD_MULTIPLE = LATENT_DOWNSAMPLING
PROTOTYPE_DOWNSAMPLING = 16
MAX_SIDE = 1 << 15
DEFAULT_MAX_PIXELS = 1 << 25  # 33.5 megapixels: an 8K frame
# How torch reports a failed allocation: its allocators, and oneDNN when its workspace cannot be allocated.
ALLOCATION_FAILURES = ("alloc", "out of memory", "could not execute a primitive")
# Every CDF has at least two symbols of frequency >= 1 out of 2^16, so a symbol carries at
# least -log2(65535/65536) bits; rANS flushes its 64-bit state (8 bytes), which can hold 64 of
# those bits, and emits the rest in 32-bit words.
STATE_BYTES, STATE_BITS, WORD_BYTES = 8, 64, 4
MIN_BITS_PER_SYMBOL = -math.log2(65535 / 65536)
# Zero bytes after a stream: a decode step reads at most one 32-bit word; escape (bypass)
# chains read at most ~4 bytes per byte of data, plus one spare word per symbol.
PADDING_BYTES_PER_SYMBOL, PADDING_BYTES_PER_BYTE, PADDING_SLACK = 8, 16, 1 << 16
# Peak extra memory of a decode, per pixel and per unit of N, in float32 values: the published
# model (N=192) peaks near 1.6·N floats (1.2-1.3 KB) per pixel on the CPU, portable mode included
# (VmHWM over 256² and 512² decodes); 2·N leaves a margin.
DECODE_FLOATS_PER_PIXEL_PER_N = 2
DESYNC_MESSAGE = "this file was encoded with numerics this machine does not reproduce; re-encode in portable mode"


class SegpicFileError(ValueError):
    """A `.segpic` file that cannot be decoded: truncated, corrupted or of another format."""


class ModelMismatchError(SegpicFileError):
    """The file was written by a different model from the one asked to decode it."""


class SymbolMismatchError(SegpicFileError):
    """The decoder reproduced other symbols than the encoder coded (desync)."""


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

    def describe(self, full_hash: bool = False) -> str:
        """One printable line (a crafted header may hold any characters)."""
        weights = self.weights_hash if full_hash else self.weights_hash[:16]
        return _printable(f"{self.arch} N={self.N} M={self.M} weights {weights}")


def _printable(text: str) -> str:
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)


@dataclass(frozen=True)
class SegpicFile:
    """The decoded header and streams of one `.segpic` file."""

    identity: CodecIdentity
    grid: int
    height: int
    width: int
    channels: int
    streams: tuple[bytes, ...]
    portable: bool = True
    symbol_checksum: int | None = None  # None only in version 1 files

    @property
    def bits_per_pixel(self) -> float:
        """Rate of the image as papers count it: all streams, header excluded, over the original pixel count."""
        return 8 * sum(len(stream) for stream in self.streams) / (self.height * self.width)

    @property
    def mode(self) -> str:
        return "portable" if self.portable else "published-compatible"

    def to_bytes(self) -> bytes:
        if self.symbol_checksum is None:
            raise ValueError("a .segpic file needs the checksum of its coded symbols")
        arch = self.identity.arch.encode("utf-8")
        digest = self.identity.weights_hash.encode("ascii")
        mode = PORTABLE_MODE if self.portable else PUBLISHED_MODE
        parts = [
            MAGIC,
            struct.pack("<BBB", FORMAT_VERSION, mode, len(arch)),
            arch,
            struct.pack("<HHB", self.identity.N, self.identity.M, len(digest)),
            digest,
            struct.pack("<BIIB", self.grid, self.height, self.width, self.channels),
            struct.pack("<IB", self.symbol_checksum, len(self.streams)),
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
        if version not in READABLE_VERSIONS:
            raise SegpicFileError(
                f"{source}: .segpic format version {version}, "
                f"this reader knows {', '.join(map(str, READABLE_VERSIONS))}"
            )
        mode = reader.unpack("<B", "mode")[0] if version >= 2 else PUBLISHED_MODE
        if mode not in (PUBLISHED_MODE, PORTABLE_MODE):
            raise SegpicFileError(f"{source}: unknown coding mode {mode}")
        arch = reader.take(reader.unpack("<B", "architecture")[0], "architecture").decode("utf-8", "replace")
        N, M, digest_length = reader.unpack("<HHB", "widths")
        digest = reader.take(digest_length, "weights hash").decode("ascii", "replace")
        grid, height, width, channels = reader.unpack("<BIIB", "image header")
        checksum = reader.unpack("<I", "symbol checksum")[0] if version >= 2 else None
        (count,) = reader.unpack("<B", "stream count")
        streams = tuple(reader.take(reader.unpack("<I", "stream length")[0], "stream") for _ in range(count))
        reader.expect_end()
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or channels not in (1, 3) or grid < 1:
            raise SegpicFileError(f"{source}: invalid image header {height}x{width}x{channels}, grid {grid}")
        identity = CodecIdentity(arch, N, M, digest)
        return cls(identity, grid, height, width, channels, streams, mode == PORTABLE_MODE, checksum)


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


def pixels_to_tensor(pixels: Image.Image) -> torch.Tensor:
    """(1,C,H,W) float32 in [0,1] from 8-bit "L" (C = 1) or "RGB" (C = 3) pixels."""
    values = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0)
    return values[None, None] if pixels.mode == "L" else values.permute(2, 0, 1)[None]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(1,C,H,W) float32 in [0,1] of any opened image, by ingest's rules (`pipeline.images`):
    C = 1 for grayscale sources, 3 otherwise."""
    try:
        return pixels_to_tensor(normalize_image(image))
    except ImageRejected as error:
        raise ValueError(f"cannot code this image: {error}") from error


def load_image_file(path: Path) -> torch.Tensor:
    """(1,C,H,W) float32 in [0,1] of an image file, as ingest would store its pixels."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error
    return decode_image_bytes(data, str(path))


def decode_image_bytes(data: bytes, source: str) -> torch.Tensor:
    try:
        return pixels_to_tensor(read_image(data, max_pixels=DEFAULT_MAX_PIXELS))
    except ImageRejected as error:
        raise ValueError(f"{source}: cannot read the image ({error})") from error


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """(1,C,H,W) in [0,1] -> 8-bit PIL image ("L" for C = 1, "RGB" for C = 3)."""
    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate the last row/column until H and W are multiples of `multiple`."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="replicate")


def max_grid(height: int, width: int) -> int:
    """Largest prototype grid for an image: one cell per pixel of the padded image's 1/16-scale map."""
    return min(-(-height // PAD_MULTIPLE), -(-width // PAD_MULTIPLE)) * (PAD_MULTIPLE // PROTOTYPE_DOWNSAMPLING)


def _check_size(height: int, width: int, grid: int, max_pixels: int) -> str | None:
    """Why an image of this size cannot be coded with this grid, or None."""
    if max(height, width) > MAX_SIDE:
        return f"image {width}x{height} is larger than {MAX_SIDE} pixels on a side"
    if height * width > max_pixels:
        return f"image {width}x{height} exceeds the {max_pixels}-pixel limit"
    if not 1 <= grid <= min(255, max_grid(height, width)):
        return f"grid {grid} is outside 1..{min(255, max_grid(height, width))} for a {width}x{height} image"
    return None


def encode_image(
    model: CompressionModel,
    image: Image.Image | torch.Tensor,
    identity: CodecIdentity,
    grid: int = 4,
    portable: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> bytes:
    """Code one image (PIL, or a (1,C,H,W)/(C,H,W) tensor in [0,1] with C in {1,3}) to `.segpic` bytes.

    `portable` (the default) codes with the float64 entropy model that every machine
    reproduces; False writes the published code's streams, which decode reliably only on
    machines with the encoder's numerics.
    """
    x = image_to_tensor(image) if isinstance(image, Image.Image) else image
    x = x[None] if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected one image of 1 or 3 channels, got a tensor of shape {tuple(x.shape)}")
    channels, height, width = x.shape[1:]
    problem = _check_size(height, width, grid, max_pixels)
    if problem:
        raise ValueError(problem)
    device = next(model.parameters()).device
    coded = model.compress(pad_to_multiple(x.expand(-1, 3, -1, -1)).to(device), grid=grid, portable=portable)
    streams = tuple(image_strings[0] for image_strings in coded["strings"])
    checksum = coded["symbol_checksums"][0]
    return SegpicFile(identity, grid, height, width, channels, streams, portable, checksum).to_bytes()


def check_decodable(
    coded: SegpicFile, model: CompressionModel, identity: CodecIdentity, source: str, max_pixels: int
) -> tuple[int, int]:
    """Refuse, before any allocation, a header the model cannot or should not decode; z's shape."""
    if coded.identity != identity:
        full = coded.identity.describe() == identity.describe()
        raise ModelMismatchError(
            f"{source} was written by {coded.identity.describe(full)}, "
            f"but the decoding model is {identity.describe(full)}"
        )
    if len(coded.streams) != len(model.stream_names):
        raise SegpicFileError(
            f"{source}: {len(coded.streams)} streams, but {identity.arch} writes {len(model.stream_names)} "
            f"({', '.join(model.stream_names)})"
        )
    problem = _check_size(coded.height, coded.width, coded.grid, max_pixels)
    if problem:
        raise SegpicFileError(f"{source}: {problem}")
    shape = (-(-coded.height // PAD_MULTIPLE), -(-coded.width // PAD_MULTIPLE))
    counts = model.stream_symbol_counts(shape, coded.grid)
    for name, stream, count in zip(model.stream_names, coded.streams, counts):
        least = STATE_BYTES + max(0, int((count * MIN_BITS_PER_SYMBOL - STATE_BITS) / 8) - WORD_BYTES)
        if len(stream) < least:
            raise SegpicFileError(
                f"{source}: the {name} stream has {len(stream)} bytes, too few for the {count} symbols "
                f"of a {coded.width}x{coded.height} image (at least {least})"
            )
    return shape


def available_memory(device: torch.device) -> int | None:
    """Bytes the decoder may still allocate on `device` (None where the system does not say)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def check_memory(model: CompressionModel, height: int, width: int, source: str) -> None:
    """Refuse an image whose decode would need more memory than the machine has free."""
    padded = -(-height // PAD_MULTIPLE) * PAD_MULTIPLE * -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    needed = padded * DECODE_FLOATS_PER_PIXEL_PER_N * model.N * 4
    available = available_memory(next(model.parameters()).device)
    if available is not None and needed > available:
        raise SegpicFileError(
            f"{source}: decoding a {width}x{height} image needs about {needed / 2**30:.1f} GiB of memory, "
            f"{available / 2**30:.1f} GiB are available (see --max-pixels)"
        )


def _padded(stream: bytes, symbols: int) -> bytes:
    """The stream followed by zeros for every read the rANS decoder may make past its end."""
    return stream + bytes(PADDING_BYTES_PER_SYMBOL * symbols + PADDING_BYTES_PER_BYTE * len(stream) + PADDING_SLACK)


def decode_file(
    model: CompressionModel,
    data: bytes,
    identity: CodecIdentity,
    source: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """The reconstruction (1,C,H,W) in [0,1] on the CPU, at the original size and channel count."""
    coded = SegpicFile.from_bytes(data, source)
    shape = check_decodable(coded, model, identity, source, max_pixels)
    check_memory(model, coded.height, coded.width, source)
    counts = model.stream_symbol_counts(shape, coded.grid)
    try:
        strings = [[_padded(stream, count)] for stream, count in zip(coded.streams, counts)]
        decoded = model.decompress(strings, shape, grid=coded.grid, portable=coded.portable)
    except (MemoryError, RuntimeError) as error:  # torch reports a failed allocation as RuntimeError
        if not isinstance(error, MemoryError) and not any(sign in str(error) for sign in ALLOCATION_FAILURES):
            raise
        raise SegpicFileError(
            f"{source}: not enough memory to decode a {coded.width}x{coded.height} image (see --max-pixels)"
        ) from error
    if coded.symbol_checksum is not None and decoded["symbol_checksums"][0] != coded.symbol_checksum:
        if not coded.portable:
            raise SymbolMismatchError(f"{source}: {DESYNC_MESSAGE}")
        raise SymbolMismatchError(
            f"{source}: the decoded symbols differ from the encoded ones (symbol checksum mismatch): "
            "the file was crafted or damaged before its checksum was written"
        )
    x_hat = decoded["x_hat"][..., : coded.height, : coded.width].clamp(0, 1).cpu()
    return x_hat.mean(dim=1, keepdim=True) if coded.channels == 1 else x_hat


@dataclass(frozen=True)
class CompressConfig:
    image: Path
    checkpoint: Path
    output: Path
    grid: int = 4
    portable: bool = True
    device: str = "cpu"


@dataclass(frozen=True)
class DecompressConfig:
    segpic_file: Path
    checkpoint: Path
    output: Path
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "cpu"


@dataclass(frozen=True)
class CodingReport:
    """What one compress/decompress call did: sizes, rate and coding time (model loading excluded).

    `bits_per_pixel` counts every byte of the file (header and checksums included);
    `stream_bits_per_pixel` only the entropy-coded streams, as papers report rates.
    """

    output: Path
    height: int
    width: int
    file_bytes: int
    bits_per_pixel: float
    stream_bits_per_pixel: float
    mode: str
    seconds: float


def _report(output: Path, data: bytes, coded: SegpicFile, seconds: float) -> CodingReport:
    file_bpp = 8 * len(data) / (coded.height * coded.width)
    return CodingReport(
        output, coded.height, coded.width, len(data), file_bpp, coded.bits_per_pixel, coded.mode, seconds
    )


def compress_image_file(config: CompressConfig) -> CodingReport:
    """Image file -> `.segpic` file, with the codec from `config.checkpoint`."""
    x = load_image_file(config.image)
    model = load_codec(config.checkpoint, device=resolve_device(config.device))
    started = time.perf_counter()
    data = encode_image(model, x, CodecIdentity.of(model), grid=config.grid, portable=config.portable)
    seconds = time.perf_counter() - started
    write_bytes_atomically(config.output, data)
    return _report(config.output, data, SegpicFile.from_bytes(data, str(config.output)), seconds)


def decompress_image_file(config: DecompressConfig) -> CodingReport:
    """`.segpic` file -> image file (format from the output suffix, e.g. PNG)."""
    image_format = Image.registered_extensions().get(config.output.suffix.lower())
    if image_format is None:
        raise ValueError(f"{config.output}: unknown image format {config.output.suffix!r}")
    try:
        data = config.segpic_file.read_bytes()
    except OSError as error:
        raise ValueError(f"{config.segpic_file}: cannot read the file ({error})") from error
    coded = SegpicFile.from_bytes(data, str(config.segpic_file))
    model = load_codec(config.checkpoint, device=resolve_device(config.device))
    started = time.perf_counter()
    x_hat = decode_file(
        model, data, CodecIdentity.of(model), source=str(config.segpic_file), max_pixels=config.max_pixels
    )
    seconds = time.perf_counter() - started
    with atomic_output(config.output) as partial:
        tensor_to_image(x_hat).save(partial, format=image_format)
    return _report(config.output, data, coded, seconds)
