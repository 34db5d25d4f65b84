"""Ingest: bad inputs are fixed or skipped with a reason, killed runs resume, job arrays compose."""

import io
import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.images import ImageLimits, ImageRejected, prepare_image
from pipeline.ingest import STAGING_DIR, IngestConfig, ingest
from pipeline.manifest import read_manifest
from pipeline.output_folder import LOCK_NAME
from pipeline.sample import sample_photo_paths
from pipeline.shards import list_shards, read_rows
from encoded_images import PIXELS, encode, rotated_jpeg

GOOD = sample_photo_paths()[3]  # rocket.jpg


def rows_by_id(directory) -> dict[str, dict]:
    return {row["id"]: row for path in list_shards(directory) for row in read_rows(path)}


def decoded(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))


BAD_INPUTS = {
    "good.jpg": lambda: GOOD.read_bytes(),
    "truncated.jpg": lambda: GOOD.read_bytes()[: GOOD.stat().st_size // 2],
    "random.jpg": lambda: np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    "cmyk.jpg": lambda: encode(Image.fromarray(PIXELS).convert("CMYK"), "JPEG", quality=95),
    "gray16.png": lambda: encode(Image.fromarray((PIXELS[..., 0].astype(np.uint16) * 257)), "PNG"),
    "rgb48.png": lambda: cv2.imencode(".png", (PIXELS[..., ::-1].astype(np.uint16) * 257))[1].tobytes(),
    "gray8.png": lambda: encode(Image.fromarray(PIXELS[..., 1]), "PNG"),
    "alpha.png": lambda: encode(Image.fromarray(np.dstack([PIXELS, np.full(PIXELS.shape[:2], 0, np.uint8)])), "PNG"),
    "graya.png": lambda: encode(Image.fromarray(PIXELS[..., :2].copy(), "LA"), "PNG"),
    "rotated.jpg": rotated_jpeg,
    "tiny.png": lambda: encode(Image.fromarray(PIXELS[:32, :32]), "PNG"),
    "bomb.png": lambda: encode(Image.new("RGB", (1000, 1000), (9, 9, 9)), "PNG"),
}
LIMITS = ImageLimits(max_pixels=700 * 700)  # above rocket.jpg (640x427), below the bomb


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    for name, make in BAD_INPUTS.items():
        (folder / name).write_bytes(make())
    out = folder.parent / (folder.name + "_shards")
    summary = ingest(IngestConfig(source=str(folder), out=out, limits=LIMITS))
    return summary, out


def test_bad_inputs_are_skipped_with_their_reasons(bad_input_run):
    summary, out = bad_input_run
    manifest = read_manifest(out)
    assert {note.id: note.reason for note in manifest.skipped} == {
        "truncated.jpg": "corrupt",
        "random.jpg": "corrupt",
        "tiny.png": "too-small",
        "bomb.png": "too-large",
    }
    assert (summary.written, summary.skipped, summary.fixed) == (8, 4, 6)
    assert summary.skip_reasons == {"corrupt": 2, "too-small": 1, "too-large": 1}
    assert "8 images written, 4 skipped (2 corrupt, 1 too-large, 1 too-small), 6 fixed" in summary.line()


def test_readable_modes_keep_their_original_bytes(bad_input_run):
    rows = rows_by_id(bad_input_run[1])
    assert rows["good.jpg"]["image"]["bytes"] == GOOD.read_bytes()
    assert rows["gray8.png"]["image"]["bytes"] == BAD_INPUTS["gray8.png"]()


def test_fixes_are_named_and_reencoded_as_rgb_png(bad_input_run):
    manifest = read_manifest(bad_input_run[1])
    assert {note.id: note.reason for note in manifest.fixed} == {
        "cmyk.jpg": "colour-mode",
        "gray16.png": "16-bit",
        "rgb48.png": "16-bit",
        "alpha.png": "alpha",
        "graya.png": "alpha",
        "rotated.jpg": "exif-rotation",
    }
    rows = rows_by_id(bad_input_run[1])
    for name in ("cmyk.jpg", "gray16.png", "rgb48.png", "alpha.png", "graya.png", "rotated.jpg"):
        image = Image.open(io.BytesIO(rows[name]["image"]["bytes"]))
        assert (image.format, image.mode) == ("PNG", "RGB"), name
        assert rows[name]["image"]["path"] == name.rsplit(".", 1)[0] + ".png"


def test_fixed_pixels_are_the_obvious_ones(bad_input_run):
    rows = rows_by_id(bad_input_run[1])
    assert np.array_equal(decoded(rows["gray16.png"]), np.repeat(PIXELS[..., :1], 3, axis=2))
    assert np.array_equal(decoded(rows["rgb48.png"]), PIXELS)
    assert np.array_equal(decoded(rows["alpha.png"]), np.full_like(PIXELS, 255))  # transparent over white
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(rotated_jpeg()))).convert("RGB")
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (96, 128)
    assert np.array_equal(decoded(rows["rotated.jpg"]), np.asarray(upright))
    cmyk = Image.open(io.BytesIO(BAD_INPUTS["cmyk.jpg"]())).convert("RGB")
    assert np.array_equal(decoded(rows["cmyk.jpg"]), np.asarray(cmyk))


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, IHDR and an empty IDAT: what a bomb looks like before its pixels."""
    chunks = [b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0), b"IDAT"]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) for chunk in chunks
    )


def test_bomb_is_rejected_from_its_header_alone():
    with pytest.raises(ImageRejected, match="too-large: 12000x12000 exceeds the 100000000-pixel limit"):
        prepare_image(png_header(12_000, 12_000), ImageLimits(max_pixels=10**8))
    with pytest.raises(ImageRejected, match="too-large"):  # past Pillow's own threshold too
        prepare_image(png_header(30_000, 30_000), ImageLimits(max_pixels=10**8))
    with pytest.raises(ImageRejected, match="corrupt"):  # within the limit, so decoding is tried and fails
        prepare_image(png_header(300, 300), ImageLimits(max_pixels=10**8))


def ingest_sample(out, **overrides) -> IngestConfig:
    settings = {"source": "sample", "out": out, "shard_bytes": 900_000, "row_group_bytes": 300_000, **overrides}
    return IngestConfig(**settings)


KILL_AFTER_TWO_PARTS = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from pipeline import ingest as module
    saves = []
    original = module.PartLog.save
    def save_then_die(self, path):
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the third part's file is in place, its log is not
        saves.append(path)
        original(self, path)
    module.PartLog.save = save_then_die
    module.ingest(module.IngestConfig("sample", Path(sys.argv[1]), shard_bytes=900_000, row_group_bytes=300_000))
    """
)


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_duplicating_images(tmp_path):
    reference = ingest(ingest_sample(tmp_path / "straight"))
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_PARTS, str(out)], capture_output=True)
    assert killed.returncode == -9
    assert sorted(path.name for path in out.iterdir()) == sorted([LOCK_NAME, STAGING_DIR])  # nothing final is visible
    logs = sorted((out / STAGING_DIR).glob("part-*.json"))
    assert len(logs) == 2 and len(list((out / STAGING_DIR).glob("part-*.parquet"))) == 3  # third: unlogged
    logged_rows = sum(json.loads(log.read_text())["rows"] for log in logs)

    resumed = ingest(ingest_sample(out))
    assert resumed.written == reference.written - logged_rows
    assert [path.name for path in list_shards(out)] == [path.name for path in list_shards(tmp_path / "straight")]
    assert rows_by_id(out) == rows_by_id(tmp_path / "straight")
    assert [entry.sha256 for entry in read_manifest(out).shards] == [
        entry.sha256 for entry in read_manifest(tmp_path / "straight").shards
    ]
    assert not (out / STAGING_DIR).exists()


def test_failure_mid_shard_leaves_no_partial_file_and_rerun_completes(tmp_path, monkeypatch):
    from pipeline import ingest as module

    calls = []

    def failing_prepare(data, limits):
        calls.append(1)
        if len(calls) == 6:
            raise MemoryError("injected")
        return prepare_image(data, limits)

    monkeypatch.setattr(module, "prepare_image", failing_prepare)
    with pytest.raises(MemoryError):
        ingest(ingest_sample(tmp_path, workers=1))
    assert not list(tmp_path.rglob("*.incomplete"))
    assert not list(tmp_path.glob("part-*"))
    monkeypatch.undo()
    summary = ingest(ingest_sample(tmp_path))
    assert summary.complete and sorted(rows_by_id(tmp_path)) == sorted(path.name for path in sample_photo_paths())


def test_finished_run_is_not_redone_and_other_settings_are_refused(sample_image_shards):
    same = IngestConfig(source="sample", out=sample_image_shards, shard_bytes=1_500_000, row_group_bytes=400_000)
    again = ingest(same)
    assert (again.written, again.total_rows, again.shards) == (0, 10, 3)
    with pytest.raises(ValueError, match="other settings"):
        ingest(IngestConfig(source="sample", out=sample_image_shards, limit=3))


def test_job_array_shards_cover_the_source_once(tmp_path):
    for index in (2, 0):
        summary = ingest(ingest_sample(tmp_path, shard_index=index, num_shards=3))
        assert not summary.complete
    assert not read_manifest(tmp_path).complete
    summary = ingest(ingest_sample(tmp_path, shard_index=1, num_shards=3))
    assert summary.complete and read_manifest(tmp_path).complete
    ids = [row["id"] for path in list_shards(tmp_path) for row in read_rows(path, ["id"])]
    photos = [path.name for path in sample_photo_paths()]
    assert ids == photos[0::3] + photos[1::3] + photos[2::3]


def test_cli_prints_the_summary_and_turns_bad_sources_into_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "sample", "--out", str(tmp_path / "out"), "--limit", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 images written, 0 skipped" in result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["rows"] == 2
    result = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "missing: no such file or folder" in result.output and "Traceback" not in result.output


def test_cli_job_array_options_name_the_shard_and_must_come_together(tmp_path):
    runner = CliRunner()
    args = ["ingest", "sample", "--out", str(tmp_path), "--no-progress", "--limit", "4"]
    result = runner.invoke(app, [*args, "--shard-index", "1", "--num-shards", "2"])
    assert result.exit_code == 0, result.output
    assert "2 images written" in result.output and "incomplete (other jobs pending)" in result.output
    ids = [row["id"] for row in read_rows(tmp_path / "part-00001-of-00002.parquet", ["id"])]
    assert ids == ["chelsea.png", "rocket.jpg"]
    result = runner.invoke(app, [*args, "--shard-index", "1"])
    assert result.exit_code == 1 and "go together" in result.output


def photo_folder(folder, names=None):
    """A folder holding copies of the sample photos (all, or those named)."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sample_photo_paths():
        if names is None or photo.name in names:
            (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


def interrupt_after(monkeypatch, images: int) -> None:
    """Make the ingest die (as by running out of memory) when it prepares image number `images` + 1."""
    from pipeline import ingest as module

    calls = []

    def failing_prepare(data, limits):
        calls.append(1)
        if len(calls) > images:
            raise MemoryError("injected")
        return prepare_image(data, limits)

    monkeypatch.setattr(module, "prepare_image", failing_prepare)


def ids_in(directory) -> list[str]:
    return [row["id"] for path in list_shards(directory) for row in read_rows(path, ["id"])]


def test_resume_after_the_source_changed_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    photos = photo_folder(tmp_path / "photos")
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 5)
    with pytest.raises(MemoryError):
        ingest(IngestConfig(str(photos), out, shard_bytes=900_000, workers=1))
    monkeypatch.undo()
    logged = [record_id for log in sorted((out / STAGING_DIR).glob("part-*.json"))
              for record_id in json.loads(log.read_text())["ids"]]
    assert "astronaut.png" in logged and "chelsea.png" in logged
    (photos / "astronaut.png").unlink()  # ingested already, then deleted from the source
    (photos / "aardvark.png").write_bytes(sample_photo_paths()[1].read_bytes())  # sorts before the resume point
    summary = ingest(IngestConfig(str(photos), out, shard_bytes=900_000, workers=1))
    ids = ids_in(out)
    assert len(ids) == len(set(ids)) == 11
    assert set(ids) == {path.name for path in photos.iterdir()} | {"astronaut.png"}
    assert "1 new source record(s) among those already passed" in summary.line()
    assert "1 record(s) ingested earlier are no longer in the source (kept)" in summary.line()


def test_a_damaged_staged_part_is_redone_on_resume(tmp_path, monkeypatch):
    straight = ingest(IngestConfig("sample", tmp_path / "straight", shard_bytes=900_000))
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 6)
    with pytest.raises(MemoryError):
        ingest(IngestConfig("sample", out, shard_bytes=900_000, workers=1))
    monkeypatch.undo()
    part = out / STAGING_DIR / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    summary = ingest(IngestConfig("sample", out, shard_bytes=900_000))
    assert "part-00000.parquet was damaged" in summary.line()
    assert rows_by_id(out) == rows_by_id(tmp_path / "straight") and straight.total_rows == 10


def test_a_finished_ingest_rerun_on_a_changed_folder_says_what_changed(tmp_path):
    photos = photo_folder(tmp_path / "photos", {"chelsea.png", "coffee.png", "rocket.jpg"})
    ingest(IngestConfig(str(photos), tmp_path / "out"))
    (photos / "camera.png").write_bytes(sample_photo_paths()[8].read_bytes())
    (photos / "coffee.png").unlink()
    result = CliRunner().invoke(app, ["ingest", str(photos), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "which has changed since: 1 new (camera.png), 1 gone (coffee.png)" in result.output
    assert sorted(ids_in(tmp_path / "out")) == ["chelsea.png", "coffee.png", "rocket.jpg"]


def test_the_same_source_spelt_differently_resumes_and_finishes(tmp_path, monkeypatch):
    photo_folder(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    interrupt_after(monkeypatch, 6)
    with pytest.raises(MemoryError):
        ingest(IngestConfig("photos", tmp_path / "out", shard_bytes=900_000, workers=1))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    summary = ingest(IngestConfig(str(tmp_path / "photos") + "/", tmp_path / "out", shard_bytes=900_000))
    assert summary.complete and sorted(ids_in(tmp_path / "out")) == sorted(path.name for path in sample_photo_paths())
    again = ingest(IngestConfig("./photos", tmp_path / "out", shard_bytes=900_000))
    assert (again.written, again.total_rows) == (0, 10)


@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_an_out_inside_the_source_folder_is_refused_before_writing(tmp_path, sample_image_shards, kind):
    if kind == "folder":
        source = photo_folder(tmp_path / "photos", {"chelsea.png", "rocket.jpg"})
    else:
        source = shutil.copytree(sample_image_shards, tmp_path / "shards")
    before = sorted(path.relative_to(source) for path in source.rglob("*"))
    result = CliRunner().invoke(app, ["ingest", str(source), "--out", str(source / "shards"), "--no-progress"])
    assert result.exit_code == 1 and "is inside the source folder" in result.output and "Traceback" not in result.output
    assert sorted(path.relative_to(source) for path in source.rglob("*")) == before


def test_an_empty_folder_or_one_of_unreadable_files_exits_non_zero(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "a"), "--no-progress"])
    assert result.exit_code == 1 and "no image could be ingested (no images found)" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("one.jpg", "two.png"):
        (broken / name).write_bytes(BAD_INPUTS["random.jpg"]())
    for _ in range(2):  # the run and its re-run
        result = CliRunner().invoke(app, ["ingest", str(broken), "--out", str(tmp_path / "b"), "--no-progress"])
        assert result.exit_code == 1 and "no image could be ingested (2 corrupt)" in result.output


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["ingest", "sample", "--out", str(tmp_path / "notes.txt"), "--no-progress"])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"error: --out {tmp_path / 'notes.txt'} is an existing file, not a folder"
    ]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_second_ingest_into_a_locked_out_is_refused(tmp_path, lock_held_by_another_process):
    out = tmp_path / "out"
    with lock_held_by_another_process(out):
        result = CliRunner().invoke(app, ["ingest", "sample", "--out", str(out), "--limit", "2", "--no-progress"])
        assert result.exit_code == 1 and "being written by another segpic run" in result.output
        assert sorted(path.name for path in out.iterdir()) == [LOCK_NAME]


def test_hidden_files_and_folders_are_not_images_of_the_set(tmp_path):
    photos = photo_folder(tmp_path / "photos", {"chelsea.png", "rocket.jpg"})
    (photos / "._chelsea.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (photos / ".ipynb_checkpoints").mkdir()
    (photos / ".ipynb_checkpoints" / "rocket-checkpoint.jpg").write_bytes(sample_photo_paths()[3].read_bytes())
    summary = ingest(IngestConfig(str(photos), tmp_path / "out"))
    assert ids_in(tmp_path / "out") == ["chelsea.png", "rocket.jpg"] and summary.skipped == 0


def test_skip_notes_keep_their_detail_and_are_identical_across_runs(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("good.jpg", "random.jpg", "truncated.jpg"):
        (folder / name).write_bytes(BAD_INPUTS[name]())
    runs = [json.loads((ingest(IngestConfig(str(folder), tmp_path / f"out{run}")).out / "manifest.json").read_text())
            for run in range(2)]
    assert runs[0]["skipped"] == runs[1]["skipped"]
    notes = {note["id"]: note for note in runs[0]["skipped"]}
    assert notes["random.jpg"]["reason"] == "corrupt" and "cannot identify image file" in notes["random.jpg"]["detail"]
    assert "truncated" in notes["truncated.jpg"]["detail"] and "0x" not in json.dumps(runs[0]["skipped"])
