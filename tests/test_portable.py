"""Portable coding: a file decodes symbol-exactly under other numerics, and a decoder that
reproduces other symbols stops with one clear line. Published-compatible mode is shown to
fail under the same perturbation, so these tests can fail."""

import dataclasses
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from model.bitstream import (
    DESYNC_MESSAGE,
    MAGIC,
    CodecIdentity,
    SegpicFile,
    SymbolMismatchError,
    decode_file,
    encode_image,
)
from model.checkpoints import save_codec
from model.portable import perturbed_native_parameters

from child_process import child_environment
from random_codecs import photo, random_segpic, random_wacnn, scales_on_table_boundaries, spread_scales

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RELATIVE_NOISE = 1e-6


def relative_noise(scale: float):
    """Multiply every value by 1 + scale·N(0,1) (seeded): another machine's rounding, exaggerated."""
    generator = torch.Generator().manual_seed(7)

    def perturb(tensor: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor)
        return tensor * (1 + scale * noise)

    return perturb


@pytest.fixture(scope="module")
def boundary_codec():
    model = random_segpic(0).eval()
    model.update(force=True)
    scales_on_table_boundaries(model)
    return model, CodecIdentity.of(model)


@pytest.fixture(scope="module")
def spread_codec():
    model = spread_scales(random_segpic(0)).eval()
    model.update(force=True)
    return model, CodecIdentity.of(model)


def test_portable_file_decodes_symbol_exactly_with_perturbed_native_parameters(boundary_codec):
    model, identity = boundary_codec
    data = encode_image(model, photo(), identity, portable=True)
    reference = decode_file(model, data, identity)
    with perturbed_native_parameters(relative_noise(RELATIVE_NOISE)):
        perturbed = decode_file(model, data, identity)  # raises on any symbol mismatch
    # Same symbols; the perturbed native μ of the last slices moves the picture a hair only.
    assert torch.allclose(perturbed, reference, atol=1e-4) and not torch.equal(perturbed, reference)


def test_published_compatible_file_desyncs_under_the_same_perturbation(boundary_codec):
    model, identity = boundary_codec
    data = encode_image(model, photo(), identity, portable=False)
    assert SegpicFile.from_bytes(data).mode == "published-compatible"
    decode_file(model, data, identity)  # fine where the encoder's numerics are reproduced
    with perturbed_native_parameters(relative_noise(RELATIVE_NOISE)):
        with pytest.raises(SymbolMismatchError) as raised:
            decode_file(model, data, identity, source="kodim.segpic")
    assert str(raised.value) == f"kodim.segpic: {DESYNC_MESSAGE}"


def test_the_model_reports_the_checksum_of_the_symbols_it_decodes(spread_codec):
    model, _ = spread_codec
    x = photo(128, 128)
    for portable in (False, True):
        coded = model.compress(x, portable=portable)
        decoded = model.decompress(coded["strings"], coded["shape"], portable=portable)
        assert decoded["symbol_checksums"] == coded["symbol_checksums"]
    # Streams of one mode decoded in the other give other symbols: the checksum tells.
    coded = model.compress(x, portable=True)
    assert model.decompress(coded["strings"], coded["shape"], portable=False)["symbol_checksums"] != coded[
        "symbol_checksums"
    ]


@pytest.mark.parametrize("portable", [False, True])
def test_mismatched_symbol_checksum_is_one_clear_line(spread_codec, portable):
    model, identity = spread_codec
    parsed = SegpicFile.from_bytes(encode_image(model, photo(), identity, portable=portable))
    forged = dataclasses.replace(parsed, symbol_checksum=parsed.symbol_checksum ^ 1).to_bytes()
    with pytest.raises(SymbolMismatchError) as raised:
        decode_file(model, forged, identity, source="x.segpic")
    message = str(raised.value)
    assert message.startswith("x.segpic: ") and "\n" not in message
    assert (DESYNC_MESSAGE in message) != portable


def test_wacnn_portable_file_survives_the_perturbation_that_desyncs_published_mode():
    model = random_wacnn(0).eval()
    model.update(force=True)
    scales_on_table_boundaries(model)
    identity = CodecIdentity.of(model)
    portable, published = (encode_image(model, photo(), identity, portable=mode) for mode in (True, False))
    with perturbed_native_parameters(relative_noise(RELATIVE_NOISE)):
        decode_file(model, portable, identity)
        with pytest.raises(SymbolMismatchError):
            decode_file(model, published, identity)


def version_1_file(coded: SegpicFile) -> bytes:
    """The format-1 layout (no mode, no symbol checksum), as files written before portable mode."""
    arch, digest = coded.identity.arch.encode(), coded.identity.weights_hash.encode()
    header = MAGIC + struct.pack("<BB", 1, len(arch)) + arch
    header += struct.pack("<HHB", coded.identity.N, coded.identity.M, len(digest)) + digest
    header += struct.pack("<BIIBB", coded.grid, coded.height, coded.width, coded.channels, len(coded.streams))
    body = header + b"".join(struct.pack("<I", len(stream)) + stream for stream in coded.streams)
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_1_files_still_decode_as_published_compatible(spread_codec):
    model, identity = spread_codec
    data = encode_image(model, photo(), identity, portable=False)
    old = version_1_file(SegpicFile.from_bytes(data))
    parsed = SegpicFile.from_bytes(old)
    assert (parsed.mode, parsed.symbol_checksum) == ("published-compatible", None)
    assert torch.equal(decode_file(model, old, identity), decode_file(model, data, identity))


DECODE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from model.bitstream import CodecIdentity, decode_file, encode_image
    from model.checkpoints import load_codec

    mode, checkpoint, threads, source, target = sys.argv[1:]
    torch.set_num_threads(int(threads))
    model = load_codec(checkpoint)
    identity = CodecIdentity.of(model)
    if mode == "encode":
        x = torch.from_numpy(np.load(source))
        open(target, "wb").write(encode_image(model, x, identity, portable=True))
    else:
        np.save(target, decode_file(model, open(source, "rb").read(), identity, source=source).numpy())
    print(torch.backends.cpu.get_cpu_capability())
    """
)
CONFIGURATIONS = {
    "two threads": ({}, 2),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
    "ATEN_CPU_CAPABILITY=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "ONEDNN_MAX_CPU_ISA=SSE41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, 1),
}


def run_codec(tmp_path: Path, environment: dict, threads: int, *arguments: str) -> str:
    script = tmp_path / "codec_run.py"
    script.write_text(DECODE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), arguments[0], arguments[1], str(threads), *arguments[2:]],
        env=child_environment(**environment),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_portable_file_decodes_symbol_exactly_under_other_numeric_configurations(tmp_path, spread_codec):
    """Encode here (this CPU's best kernels, one thread); decode under each configuration in a
    fresh process, and encode under the plainest kernels and decode here."""
    model, identity = spread_codec
    checkpoint = tmp_path / "spread.pt"
    save_codec(checkpoint, model, "segpic", {"N": 24, "M": 40})
    x = photo(256, 256)  # y is 16×16: the float64 twin convolves by Winograd
    data = encode_image(model, x, identity, portable=True)
    coded = tmp_path / "photo.segpic"
    coded.write_bytes(data)
    reference = decode_file(model, data, identity)
    capabilities = set()
    for name, (environment, threads) in CONFIGURATIONS.items():
        target = tmp_path / f"{len(capabilities)}-{threads}.npy"
        capabilities.add(run_codec(tmp_path, environment, threads, "decode", str(checkpoint), str(coded), str(target)))
        # Symbol-exact (decode_file checks the checksum); pictures equal up to float32 synthesis rounding.
        assert np.allclose(np.load(target), reference.numpy(), atol=1e-4), name
    assert "DEFAULT" in capabilities and "AVX2" in capabilities
    np.save(tmp_path / "x.npy", x.numpy())
    elsewhere = tmp_path / "elsewhere.segpic"
    plain_kernels = {"ATEN_CPU_CAPABILITY": "default"}
    run_codec(tmp_path, plain_kernels, 2, "encode", str(checkpoint), str(tmp_path / "x.npy"), str(elsewhere))
    assert SegpicFile.from_bytes(elsewhere.read_bytes()).symbol_checksum == SegpicFile.from_bytes(data).symbol_checksum
    assert torch.allclose(decode_file(model, elsewhere.read_bytes(), identity), reference, atol=1e-4)
