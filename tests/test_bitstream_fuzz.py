"""Crafted `.segpic` files with valid checksums never crash, hang or exhaust the decoder.

Several hundred files derived from a real one (sizes, grids, channels, stream counts and
lengths, garbage and constant streams, modes, raw header bytes; CRC recomputed) are decoded
in a fresh process under an address-space limit. Every one must decode or be refused with
one clear line; a segfault, an abort, an uncaught exception or a timeout fails the test.
"""

import dataclasses
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.bitstream import DEFAULT_MAX_PIXELS, CodecIdentity, SegpicFile, encode_image
from model.checkpoints import save_codec
from pipeline.sample import sample_photo_paths

from child_process import child_environment
from random_codecs import random_segpic

FILE_COUNT = 320
HEADROOM_BYTES = 2 << 30  # address space allowed beyond what the loaded decoder already maps
FUZZ_MAX_PIXELS = 1 << 18  # a service decoding untrusted files sets a limit to suit its memory
SIZES = (0, 1, 7, 63, 64, 65, 100, 129, 500, 1000, 32768, 32769, 65535, 2**31, 2**32 - 1)
GRIDS = (0, 1, 2, 3, 5, 8, 9, 16, 17, 64, 255)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DECODER = textwrap.dedent(
    """
    import resource, sys, traceback
    from pathlib import Path
    import torch
    from model.bitstream import CodecIdentity, SegpicFileError, decode_file
    from model.checkpoints import load_codec

    torch.set_num_threads(1)
    model = load_codec(sys.argv[1])
    identity = CodecIdentity.of(model)
    mapped = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + int(sys.argv[3]), mapped + int(sys.argv[3])))
    for path in sorted(Path(sys.argv[2]).iterdir()):
        try:
            decode_file(model, path.read_bytes(), identity, source=path.name, max_pixels=int(sys.argv[4]))
            print("ok", path.name, flush=True)
        except SegpicFileError as error:
            print("error", str(error).replace("\\n", "<NEWLINE>"), flush=True)
        except BaseException:
            print("BUG", path.name, traceback.format_exc().replace("\\n", " | "), flush=True)
            sys.exit(3)
    """
)


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def crafted_files(valid: SegpicFile, rng: np.random.Generator) -> list[bytes]:
    """FILE_COUNT variants of `valid`, each with a correct file checksum."""
    body = valid.to_bytes()[:-4]
    stream_start = len(body) - sum(4 + len(stream) for stream in valid.streams)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    def garbage(length: int) -> bytes:
        return rng.integers(0, 256, length, dtype=np.uint8).tobytes()

    def with_stream(index: int, stream: bytes) -> SegpicFile:
        streams = list(valid.streams)
        streams[index % len(streams)] = stream
        return dataclasses.replace(valid, streams=tuple(streams))

    def raw_header_bytes() -> bytes:
        mutated = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(len(MAGIC_AND_VERSION), stream_start))] = int(rng.integers(256))
        return with_crc(bytes(mutated))

    def header_byte(offset: int, values: range) -> bytes:
        mutated = bytearray(body)
        mutated[offset] = pick(values)
        return with_crc(bytes(mutated))

    def huge_length_field() -> bytes:
        mutated = bytearray(body)
        struct.pack_into("<I", mutated, stream_start, pick((2**32 - 1, 2**31, len(body), 0)))
        return with_crc(bytes(mutated))

    mutations = [
        lambda: dataclasses.replace(valid, height=pick(SIZES), width=pick(SIZES)).to_bytes(),
        lambda: dataclasses.replace(valid, grid=pick(GRIDS)).to_bytes(),
        lambda: dataclasses.replace(valid, channels=pick((0, 1, 2, 4, 255))).to_bytes(),
        lambda: dataclasses.replace(valid, streams=valid.streams[: int(rng.integers(0, 4))]).to_bytes(),
        lambda: dataclasses.replace(valid, streams=valid.streams + (garbage(int(rng.integers(0, 64))),)).to_bytes(),
        lambda: with_stream(int(rng.integers(4)), valid.streams[0][: int(rng.integers(0, 40))]).to_bytes(),
        lambda: with_stream(int(rng.integers(4)), garbage(int(rng.integers(0, 5000)))).to_bytes(),
        lambda: with_stream(int(rng.integers(4)), pick((b"\xff", b"\x00", b"\x80")) * int(rng.integers(5000))).to_bytes(),
        lambda: dataclasses.replace(valid, streams=tuple(valid.streams[i] for i in rng.permutation(4))).to_bytes(),
        lambda: dataclasses.replace(
            valid, portable=not valid.portable, symbol_checksum=int(rng.integers(2**32))
        ).to_bytes(),
        raw_header_bytes,
        huge_length_field,
        lambda: with_crc(body + garbage(int(rng.integers(1, 64)))),
        lambda: header_byte(len(MAGIC_AND_VERSION) - 1, range(3, 256)),
        lambda: header_byte(len(MAGIC_AND_VERSION), range(2, 256)),
    ]
    return [mutations[index % len(mutations)]() for index in range(FILE_COUNT)]


MAGIC_AND_VERSION = b"SEGPIC\x02"


def decode_all(tmp_path: Path, checkpoint: Path, folder: Path, headroom: int, max_pixels: int) -> list[str]:
    """One output line per file, from a fresh decoder process under an address-space limit."""
    script = tmp_path / "decode_all.py"
    script.write_text(DECODER)
    result = subprocess.run(
        [sys.executable, str(script), str(checkpoint), str(folder), str(headroom), str(max_pixels)],
        env=child_environment(), capture_output=True, text=True, timeout=600,
    )
    died = f"decoder died ({result.returncode}): {result.stdout[-3000:]} {result.stderr[-3000:]}"
    assert result.returncode == 0, died
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> tuple[Path, SegpicFile]:
    model = random_segpic(0).eval()
    model.update(force=True)
    checkpoint = tmp_path_factory.mktemp("fuzz") / "tiny.pt"
    save_codec(checkpoint, model, "segpic", {"N": 24, "M": 40})
    with Image.open(sample_photo_paths()[3]) as image:
        data = encode_image(model, image.convert("RGB").crop((0, 0, 100, 70)), CodecIdentity.of(model))
    return checkpoint, SegpicFile.from_bytes(data)


def test_size_within_the_pixel_limit_but_beyond_memory_is_one_clear_line(tmp_path, coded):
    checkpoint, valid = coded
    assert 3000 * 3000 <= DEFAULT_MAX_PIXELS
    folder = tmp_path / "large"
    folder.mkdir()
    (folder / "large.segpic").write_bytes(dataclasses.replace(valid, height=3000, width=3000).to_bytes())
    lines = decode_all(tmp_path, checkpoint, folder, 1 << 30, DEFAULT_MAX_PIXELS)
    assert len(lines) == 1
    # Refused up front when the machine has too little free memory, else when an allocation fails.
    assert re.fullmatch(
        r"error large\.segpic: (not enough memory to decode a 3000x3000 image|decoding a 3000x3000 image needs "
        r"about [\d.]+ GiB of memory, [\d.]+ GiB are available) \(see --max-pixels\)",
        lines[0],
    ), lines


def test_crafted_files_see_only_one_line_errors_under_a_memory_limit(tmp_path, coded):
    checkpoint, valid = coded
    folder = tmp_path / "crafted"
    folder.mkdir()
    for index, crafted in enumerate(crafted_files(valid, np.random.default_rng(0))):
        assert zlib.crc32(crafted[:-4]) == struct.unpack("<I", crafted[-4:])[0]
        (folder / f"{index:03d}.segpic").write_bytes(crafted)
    lines = decode_all(tmp_path, checkpoint, folder, HEADROOM_BYTES, FUZZ_MAX_PIXELS)
    assert len(lines) == FILE_COUNT
    assert all(line.startswith(("ok ", "error ")) and "<NEWLINE>" not in line for line in lines)
    errors = [line.removeprefix("error ") for line in lines if line.startswith("error ")]
    assert all(error[:12].endswith(".segpic: ") or error[:11].endswith(".segpic ") for error in errors)
    kinds = Counter(next((kind for kind in KINDS + ("GiB of memory",) if kind in error), "other") for error in errors)
    # Every class of defect is met and refused for what it is.
    assert all(kinds[kind] > 0 for kind in KINDS), (kinds, [kind for kind in KINDS if not kinds[kind]])
    assert kinds["other"] == 0, [error for error in errors if "other" == next((k for k in KINDS if k in error), "other")]


KINDS = (
    "invalid image header",
    "-pixel limit",
    "grid",
    "streams, but segpic writes 4",
    "too few for the",
    "truncated",
    "unexpected bytes",
    "symbol checksum mismatch",
    "re-encode in portable mode",
    "was written by",
    "unknown coding mode",
    "format version",
)
