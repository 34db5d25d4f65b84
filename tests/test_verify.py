"""Verify: a good directory passes; damage, gaps, undecodable rows and misaligned masks are each reported."""

import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.manifest import MANIFEST_NAME, Manifest, RecordNote, read_manifest, shard_entry, write_manifest
from pipeline.shards import IMAGE_SCHEMA, MASK_KIND, MASK_SCHEMA, RAW_SCHEMA, ShardWriter, list_shards, read_rows, shard_name
from pipeline.verify import VerifyConfig, verify

runner = CliRunner()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def block_label_map(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return ((ys // 128) * 8 + xs // 128).astype(np.uint8)


def write_masks(images, out, reorder: bool = False, size_of=None, failed=None) -> None:
    """Mask shards aligned with `images` (optionally with two rows swapped, label maps resized, or one row
    written as the masks stage's failure marker: num_regions 0 over the label map `failed` returns)."""
    entries, skipped = [], []
    for path in list_shards(images):
        rows = list(read_rows(path, ["id", "width", "height"]))
        if reorder and len(rows) > 1:
            rows[0], rows[1] = rows[1], rows[0]
        with ShardWriter(out / path.name, MASK_SCHEMA) as writer:
            for row in rows:
                width, height = size_of(row) if size_of else (row["width"], row["height"])
                label_map = block_label_map(width, height)
                num_regions = int(label_map.max()) + 1
                if failed is not None and row is rows[0]:
                    label_map, num_regions = failed(label_map), 0
                    skipped.append(RecordNote(row["id"], "RuntimeError: injected"))
                writer.write(
                    {"id": row["id"], "mask": {"bytes": png(label_map), "path": None},
                     "num_regions": num_regions, "coverage": 1.0, "mean_iou": 0.0,
                     "generator": "blocks", "settings_hash": "0"}
                )
        entries.append(shard_entry(out / path.name, len(rows)))
    write_manifest(out, Manifest(kind=MASK_KIND, settings={"generator": "blocks"}, shards=entries, skipped=skipped))


@pytest.fixture
def images(sample_image_shards, tmp_path):
    """A private copy of the sample shards, free to damage."""
    return shutil.copytree(sample_image_shards, tmp_path / "images")


def test_ingested_shards_and_aligned_masks_pass(images, tmp_path):
    write_masks(images, tmp_path / "masks")
    report = verify(VerifyConfig(images, tmp_path / "masks"))
    assert report.ok, report.problems
    assert (report.shards, report.rows) == (6, 20)
    result = runner.invoke(app, ["verify", str(images), "--masks", str(tmp_path / "masks")])
    assert result.exit_code == 0 and "verify: ok, 20 rows in 6 shards" in result.output


def test_flipped_bytes_are_caught_and_exit_non_zero(images):
    damaged = list_shards(images)[1]
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(byte ^ 0xFF for byte in data[middle : middle + 64])
    damaged.write_bytes(bytes(data))
    report = verify(VerifyConfig(images))
    assert any(damaged.name in problem and "sha256" in problem for problem in report.problems)
    result = runner.invoke(app, ["verify", str(images)])
    assert result.exit_code == 1
    assert "sha256" in result.output and "problems" in result.output


def test_missing_shard_and_missing_manifest_are_reported(images):
    list_shards(images)[2].unlink()
    problems = verify(VerifyConfig(images)).problems
    assert any("missing shard part-00002-of-00003.parquet" in problem for problem in problems)
    (images / MANIFEST_NAME).unlink()
    assert any("no manifest" in problem for problem in verify(VerifyConfig(images)).problems)


def test_row_counts_must_match_the_manifest(images):
    manifest = json.loads((images / MANIFEST_NAME).read_text())
    manifest["shards"][0]["rows"] += 1
    (images / MANIFEST_NAME).write_text(json.dumps(manifest))
    problems = verify(VerifyConfig(images)).problems
    assert problems == [
        f"{images / MANIFEST_NAME}: counts.rows is 10, its lists give 11",
        f"{images / manifest['shards'][0]['name']}: 4 rows, the manifest says 5",
    ]


def test_undecodable_row_is_named_even_when_checksums_match(tmp_path):
    out = tmp_path / "images"
    path = out / shard_name(0, 1)
    with ShardWriter(path, IMAGE_SCHEMA) as writer:
        for record, data, width in [
            ("ok", png(np.zeros((70, 80), np.uint8)), 80),
            ("garbage", b"\x89PNG not really", 80),
            ("liar", png(np.zeros((70, 80), np.uint8)), 64),
        ]:
            writer.write({"id": record, "image": {"bytes": data, "path": None}, "width": width, "height": 70})
    write_manifest(out, Manifest(kind="images", settings={}, shards=[shard_entry(path, 3)]))
    problems = verify(VerifyConfig(out)).problems
    assert len(problems) == 2
    assert "'garbage': image does not decode" in problems[0]
    assert "'liar': decodes to 80x70, recorded 64x70" in problems[1]


def test_masks_out_of_order_are_misaligned(images, tmp_path):
    write_masks(images, tmp_path / "masks", reorder=True)
    problems = verify(VerifyConfig(images, tmp_path / "masks")).problems
    assert len(problems) == 3
    assert all("ids or their order differ from the image shard" in problem for problem in problems)


def test_label_maps_of_the_wrong_size_and_missing_mask_shards(images, tmp_path):
    write_masks(images, tmp_path / "masks", size_of=lambda row: (row["width"] // 2, row["height"]))
    (tmp_path / "masks" / shard_name(1, 3)).unlink()
    problems = verify(VerifyConfig(images, tmp_path / "masks")).problems
    assert any("missing shard part-00001-of-00003.parquet" in problem for problem in problems)
    assert any("'astronaut.png': label map is 256x512, its image 512x512" in problem for problem in problems)


def test_failure_marker_rows_pass_only_when_their_label_map_is_empty(images, tmp_path):
    write_masks(images, tmp_path / "empty", failed=np.zeros_like)
    assert verify(VerifyConfig(images, tmp_path / "empty")).ok
    write_masks(images, tmp_path / "labelled", failed=lambda label_map: label_map)
    problems = verify(VerifyConfig(images, tmp_path / "labelled")).problems
    assert any("failure marker" in problem for problem in problems), problems


def edit_manifest(directory, change) -> None:
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    change(manifest)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_manifest_counts_and_settings_hash_must_agree_with_its_lists(images):
    edit_manifest(images, lambda manifest: manifest["counts"].update(skipped=3))
    edit_manifest(images, lambda manifest: manifest["settings"].update(limit=5))
    problems = verify(VerifyConfig(images)).problems
    assert problems == [
        f"{images / MANIFEST_NAME}: counts.skipped is 3, its lists give 0",
        f"{images / MANIFEST_NAME}: settings_hash {json.loads((images / MANIFEST_NAME).read_text())['settings_hash']} "
        "does not match its settings",
    ]


def test_an_image_listed_as_skipped_must_not_be_in_the_shards(images):
    def skip_chelsea(manifest):
        manifest["skipped"].append({"id": "chelsea.png", "reason": "corrupt", "detail": ""})
        manifest["counts"]["skipped"] = 1

    edit_manifest(images, skip_chelsea)
    assert verify(VerifyConfig(images)).problems == [
        f"{images / MANIFEST_NAME}: 'chelsea.png' is listed as skipped but is in the shards"
    ]


def test_mask_failures_must_be_exactly_the_failure_marker_rows(images, tmp_path):
    write_masks(images, tmp_path / "masks", failed=np.zeros_like)

    def forget_failures(manifest):
        manifest["skipped"], manifest["counts"]["skipped"] = [], 0

    edit_manifest(tmp_path / "masks", forget_failures)
    problems = verify(VerifyConfig(images, tmp_path / "masks")).problems
    assert len(problems) == 3 and all("a failure marker row not listed as failed" in problem for problem in problems)


def test_mask_shards_made_from_other_image_shards_are_named(images, tmp_path):
    write_masks(images, tmp_path / "masks")
    edit_manifest(tmp_path / "masks", lambda manifest: manifest["shards"][1].update(image_sha256="0" * 64))
    assert verify(VerifyConfig(images, tmp_path / "masks")).problems == [
        f"{tmp_path / 'masks' / shard_name(1, 3)}: made from another image shard than {shard_name(1, 3)} (sha256 differs)"
    ]


def test_a_damaged_parquet_file_is_one_line_naming_it(images):
    shard = list_shards(images)[0]
    shard.write_bytes(b"PAR1" + b"\x00" * 100)
    result = runner.invoke(app, ["verify", str(images)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert any(str(shard) in line and "Parquet" in line for line in result.output.splitlines())


@pytest.fixture
def raw_masks(images, tmp_path):
    """Raw masks of the sample shards (the grid's cells), made by `segpic masks --raw`."""
    result = runner.invoke(app, ["masks", str(images), "--raw", str(tmp_path / "raw"), "--generator", "grid", "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp_path / "raw"


def test_raw_mask_shards_pass_beside_the_label_maps(images, raw_masks, tmp_path):
    result = runner.invoke(app, ["repaint", str(raw_masks), "--out", str(tmp_path / "masks"), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["verify", str(images), "--masks", str(tmp_path / "masks"), "--raw", str(raw_masks)])
    assert result.exit_code == 0 and "verify: ok, 30 rows in 9 shards" in result.output, result.output


def test_a_raw_shard_that_fails_its_checksum_is_named(images, raw_masks):
    damaged = list_shards(raw_masks)[2]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(images), "--raw", str(raw_masks)])
    assert result.exit_code == 1 and f"{damaged}: size or sha256 differs from the manifest" in result.output


def rewrite_raw_shard(raw, change) -> None:
    """Rewrite the first raw shard with `change` applied to its first row, and its manifest entry to match."""
    shard = list_shards(raw)[0]
    rows = list(read_rows(shard))
    change(rows[0])
    with ShardWriter(shard, RAW_SCHEMA) as writer:
        for row in rows:
            writer.write(row)
    manifest = read_manifest(raw)
    entries = [replace(shard_entry(shard, len(rows)), image_sha256=entry.image_sha256) if entry.name == shard.name else entry
               for entry in manifest.shards]
    write_manifest(raw, replace(manifest, shards=entries))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda row: row["masks"][0]["segmentation"].update(counts="0"), "mask 1: RLE counts do not cover the"),
        (lambda row: row["masks"][1].update(area=1), "mask 2: area 1 and bbox"),
        (lambda row: row.update(width=row["width"] + 1), "raw masks are for a"),
        (lambda row: row.update(failure="RuntimeError: injected"), "a failed image (RuntimeError: injected) with 16 mask(s)"),
    ],
)
def test_raw_rows_that_do_not_decode_to_their_image_are_named(images, raw_masks, change, problem):
    rewrite_raw_shard(raw_masks, change)
    problems = verify(VerifyConfig(images, raw=raw_masks)).problems
    first = next(read_rows(list_shards(raw_masks)[0]))["id"]
    assert any(f"record {first!r}: {problem}" in line for line in problems), problems


def test_raw_masks_made_from_other_image_shards_are_named(images, raw_masks):
    edit_manifest(raw_masks, lambda manifest: manifest["shards"][0].update(image_sha256="0" * 64))
    assert verify(VerifyConfig(images, raw=raw_masks)).problems == [
        f"{raw_masks / shard_name(0, 3)}: made from another image shard than {shard_name(0, 3)} (sha256 differs)"
    ]
