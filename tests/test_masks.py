"""The masks stage: aligned mask shards from real image shards, resumable, readable by `datasets`."""

import json
import math
import shutil

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.label_map_format import decode_label_map
from pipeline.cli import app
from pipeline.generators.grid import GridConfig, GridGenerator
from pipeline.ingest import IngestConfig, ingest
from pipeline.manifest import Manifest, read_manifest, shard_entry, write_manifest
from pipeline.masks import MasksConfig, make_masks
from pipeline.shards import IMAGE_SCHEMA, ShardWriter, list_shards, read_rows
from pipeline.verify import VerifyConfig, verify


def write_image_set(directory, rows) -> None:
    """One image shard of `rows` with its manifest, as ingest would leave it."""
    shard = directory / "part-00000-of-00001.parquet"
    with ShardWriter(shard, IMAGE_SCHEMA) as writer:
        for row in rows:
            writer.write(row)
    write_manifest(directory, Manifest(kind="images", settings={}, shards=[shard_entry(shard, len(rows))]))


def grid_config(images, out, **overrides) -> MasksConfig:
    return MasksConfig(images=images, out=out, generator="grid", options=(("grid", "3"),), **overrides)


def mask_tables(directory) -> dict[str, list[dict]]:
    return {path.name: pq.read_table(path).to_pylist() for path in list_shards(directory)}


def shard_bytes(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in list_shards(directory)}


def test_mask_shards_line_up_with_image_shards(sample_image_shards, tmp_path):
    summary = make_masks(grid_config(sample_image_shards, tmp_path))
    assert summary.complete and summary.failed == 0
    image_shards = list_shards(sample_image_shards)
    assert [path.name for path in list_shards(tmp_path)] == [path.name for path in image_shards]
    for image_shard in image_shards:
        images = list(read_rows(image_shard, ["id", "width", "height"]))
        masks = list(read_rows(tmp_path / image_shard.name))
        assert [row["id"] for row in masks] == [row["id"] for row in images]
        for image, mask in zip(images, masks):
            label_map = decode_label_map(mask["mask"]["bytes"], "test")
            assert label_map.shape == (image["height"], image["width"])
            assert mask["num_regions"] == 9 == label_map.max() + 1
            assert mask["generator"] == "grid" and len(mask["settings_hash"]) == 16


def test_manifest_lists_every_mask_shard_with_its_checksum(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path))
    manifest = read_manifest(tmp_path)
    assert manifest.kind == "masks" and manifest.complete
    assert [shard.name for shard in manifest.shards] == [path.name for path in list_shards(sample_image_shards)]
    assert manifest.rows == 10 and manifest.settings["generator"] == "grid"


def test_segpic_verify_accepts_the_mask_shards(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path))
    report = verify(VerifyConfig(images=sample_image_shards, masks=tmp_path))
    assert report.problems == [] and report.rows == 20


def test_datasets_decodes_mask_shards(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path / "masks"))
    files = [str(path) for path in list_shards(tmp_path / "masks")]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(loaded.features["mask"], datasets.Image)
    first = loaded[0]
    assert np.asarray(first["mask"]).max() == first["num_regions"] - 1


def test_a_run_killed_mid_way_resumes_to_the_same_shards(sample_image_shards, tmp_path, monkeypatch):
    make_masks(grid_config(sample_image_shards, tmp_path / "reference", keep_raw=True))
    calls = {"count": 0}
    original = GridGenerator.regions

    def dies_on_the_sixth_image(self, image, image_id):
        calls["count"] += 1
        if calls["count"] == 6:
            raise KeyboardInterrupt  # the process is stopped mid-shard
        return original(self, image, image_id)

    monkeypatch.setattr(GridGenerator, "regions", dies_on_the_sixth_image)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        make_masks(grid_config(sample_image_shards, out, keep_raw=True))
    finished = sorted(path.name for path in out.glob("*.parquet"))
    assert 0 < len(finished) < 3 and not list(out.glob("*.incomplete"))
    assert sorted(path.name for path in (tmp_path / "resumed-raw").glob("*.parquet")) == finished  # raw shards with them
    (out / "part-00002-of-00003.parquet.incomplete").write_bytes(b"left by a SIGKILL")
    monkeypatch.setattr(GridGenerator, "regions", original)
    summary = make_masks(grid_config(sample_image_shards, out, keep_raw=True))
    assert summary.already_done == finished
    for folder in ("", "-raw"):
        assert shard_bytes(tmp_path / f"resumed{folder}") == shard_bytes(tmp_path / f"reference{folder}")
        assert not list((tmp_path / f"resumed{folder}").glob("*.incomplete")) and read_manifest(tmp_path / f"resumed{folder}").complete


def test_other_settings_into_a_finished_directory_are_refused(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path))
    with pytest.raises(ValueError, match="other settings"):
        make_masks(MasksConfig(images=sample_image_shards, out=tmp_path, generator="grid", options=(("grid", "5"),)))


def test_job_array_jobs_write_disjoint_shards_and_the_last_completes_the_set(sample_image_shards, tmp_path):
    first = make_masks(grid_config(sample_image_shards, tmp_path, shard_index=0, num_shards=2))
    assert first.written == ["part-00000-of-00003.parquet", "part-00002-of-00003.parquet"] and not first.complete
    assert not read_manifest(tmp_path).complete
    second = make_masks(grid_config(sample_image_shards, tmp_path, shard_index=1, num_shards=2))
    assert second.written == ["part-00001-of-00003.parquet"] and second.complete
    assert read_manifest(tmp_path).rows == 10


def test_a_failing_image_keeps_its_row_and_is_listed_in_the_manifest(sample_image_shards, tmp_path, monkeypatch):
    original = GridGenerator.regions

    def fails_on_coffee(self, image, image_id):
        if image_id.startswith("coffee"):
            raise RuntimeError("model crashed")
        return original(self, image, image_id)

    monkeypatch.setattr(GridGenerator, "regions", fails_on_coffee)
    summary = make_masks(grid_config(sample_image_shards, tmp_path))
    assert summary.failed == 1 and summary.complete
    rows = [row for rows in mask_tables(tmp_path).values() for row in rows]
    assert len(rows) == 10
    failed = [row for row in rows if row["id"].startswith("coffee")][0]
    assert failed["num_regions"] == 0 and math.isnan(failed["mean_iou"])
    assert decode_label_map(failed["mask"]["bytes"], "test").max() == 0
    skipped = json.loads((tmp_path / "manifest.json").read_text())["skipped"]
    assert [note["id"] for note in skipped] == [failed["id"]] and "model crashed" in skipped[0]["reason"]


def test_felzenszwalb_masks_through_the_command_line(sample_image_shards, tmp_path):
    out = tmp_path / "felzenszwalb"
    args = ["masks", str(sample_image_shards), "--out", str(out), "--generator", "felzenszwalb",
            "--set", "scale=800", "--set", "max_regions=20", "--no-progress", "--shard-index", "2", "--num-shards", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = list(read_rows(out / "part-00002-of-00003.parquet"))
    assert rows and all(1 <= row["num_regions"] <= 20 for row in rows)
    assert all(row["coverage"] == 1.0 for row in rows)


def test_scoped_settings_apply_only_to_their_generator(sample_image_shards, tmp_path):
    args = ["masks", str(sample_image_shards), "--out", str(tmp_path), "--generator", "grid", "--no-progress",
            "--set", "sam.checkpoint=", "--set", "sam.model=vit_h", "--set", "felzenszwalb.scale=400", "--set", "grid.grid=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {row["num_regions"] for row in read_rows(tmp_path / "part-00000-of-00003.parquet")} == {4}
    assert read_manifest(tmp_path).settings["config"] == {"grid": 2}


def test_command_line_reports_bad_settings_in_one_line(sample_image_shards, tmp_path):
    result = CliRunner().invoke(app, ["masks", str(sample_image_shards), "--out", str(tmp_path), "--set", "points"])
    assert result.exit_code == 1
    assert "KEY=VALUE" in result.output


def test_an_undecodable_image_gets_a_failure_row_of_its_recorded_size(sample_image_shards, tmp_path):
    images = tmp_path / "images"
    good = next(read_rows(list_shards(sample_image_shards)[0]))
    write_image_set(images, [
        {"id": "broken.jpg", "image": {"bytes": b"\xff\xd8 truncated", "path": None}, "width": 80, "height": 64}, good
    ])
    summary = make_masks(grid_config(images, tmp_path / "masks"))
    assert summary.failed == 1 and summary.images == 2
    broken, decoded = read_rows(tmp_path / "masks" / "part-00000-of-00001.parquet")
    assert broken["id"] == "broken.jpg" and broken["num_regions"] == 0
    assert decode_label_map(broken["mask"]["bytes"], "test").shape == (64, 80)
    assert decoded["id"] == good["id"] and decoded["num_regions"] == 9


def snapshot(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def test_out_set_to_the_image_folder_is_refused_and_the_images_stay_identical(sample_image_shards, tmp_path):
    images = shutil.copytree(sample_image_shards, tmp_path / "images")
    before = snapshot(images)
    result = CliRunner().invoke(app, ["masks", str(images), "--out", str(images), "--generator", "grid", "--no-progress"])
    assert result.exit_code == 1 and "is the image shard folder" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert snapshot(images) == before and sorted(path.name for path in images.iterdir()) == sorted(before)


def test_out_holding_another_image_set_is_refused_before_anything_is_written(sample_image_shards, tmp_path):
    other = shutil.copytree(sample_image_shards, tmp_path / "other")
    before = snapshot(other)
    with pytest.raises(ValueError, match="holds images shards"):
        make_masks(grid_config(sample_image_shards, other))
    assert snapshot(other) == before and sorted(path.name for path in other.iterdir()) == sorted(before)


def test_finished_mask_shards_of_other_image_shards_are_not_taken_as_done(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path / "masks"))
    regrouped = tmp_path / "regrouped"  # the same photos and shard names, written with other row groups
    ingest(IngestConfig(source="sample", out=regrouped, shard_bytes=1_500_000, row_group_bytes=100_000))
    assert [path.name for path in list_shards(regrouped)] == [path.name for path in list_shards(sample_image_shards)]
    with pytest.raises(ValueError, match="made from another image set"):
        make_masks(grid_config(regrouped, tmp_path / "masks"))
    entries = read_manifest(tmp_path / "masks").shards
    assert [entry.image_sha256 for entry in entries] == [entry.sha256 for entry in read_manifest(sample_image_shards).shards]


def test_a_mask_folder_is_not_accepted_as_the_image_folder(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path / "masks"))
    with pytest.raises(ValueError, match="holds masks shards, not image shards"):
        make_masks(grid_config(tmp_path / "masks", tmp_path / "again"))
    assert not (tmp_path / "again").exists()


def test_a_generator_that_cannot_start_fails_once_before_any_shard(sample_image_shards, tmp_path):
    out = tmp_path / "masks"
    args = ["masks", str(sample_image_shards), "--out", str(out), "--generator", "coco-panoptic", "--no-progress",
            "--set", f"panoptic_dir={tmp_path / 'no-such-folder'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: mask generator coco-panoptic cannot start: FileNotFoundError: panoptic_dir {tmp_path / 'no-such-folder'}: "
        "no such folder"
    ]
    assert not list(out.glob("*.parquet")) and not (out / "manifest.json").exists()


def test_an_unreadable_sam_checkpoint_fails_once_in_one_short_line(sample_image_shards, tmp_path):
    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"<html>403 Forbidden</html>" * 100)  # what a failed download leaves behind
    out = tmp_path / "masks"
    args = ["masks", str(sample_image_shards), "--out", str(out), "--generator", "sam", "--no-progress",
            "--set", "sam.model=vit_b", "--set", f"sam.checkpoint={checkpoint}", "--set", "sam.device=cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {checkpoint}: not a torch checkpoint (it starts '<html>403 Forbidden")
    assert not list(out.glob("*.parquet")) and not (out / "manifest.json").exists()


def test_a_run_where_every_image_fails_exits_non_zero(tmp_path):
    images = tmp_path / "images"
    write_image_set(images, [
        {"id": f"broken-{index}.jpg", "image": {"bytes": b"\xff\xd8 truncated", "path": None}, "width": 80, "height": 64}
        for index in range(3)
    ])
    args = ["masks", str(images), "--out", str(tmp_path / "masks"), "--generator", "grid", "--no-progress"]
    for _ in range(2):  # the first run and its re-run both say so
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "no image could be labelled" in result.output and "broken-0.jpg" in result.output


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(
    sample_image_shards, tmp_path, lock_held_by_another_process
):
    out = tmp_path / "masks"
    with lock_held_by_another_process(out):
        result = CliRunner().invoke(app, ["masks", str(sample_image_shards), "--out", str(out), "--generator", "grid",
                                          "--no-progress"])
        assert result.exit_code == 1 and "being written by another segpic run" in result.output
        assert not list(out.glob("*.parquet"))
        with pytest.raises(ValueError, match="being written by another segpic run"):
            make_masks(grid_config(sample_image_shards, out, shard_index=0, num_shards=2))  # a job cannot join it
    assert make_masks(grid_config(sample_image_shards, out)).complete  # the lock dies with its process


def test_a_damaged_image_shard_is_one_line_naming_it(sample_image_shards, tmp_path):
    images = shutil.copytree(sample_image_shards, tmp_path / "images")
    damaged = list_shards(images)[1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    result = CliRunner().invoke(app, ["masks", str(images), "--out", str(tmp_path / "masks"), "--generator", "grid",
                                      "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"error: {damaged}: not a readable Parquet file")


def test_an_image_whose_label_map_would_not_fit_is_recorded_as_failed(sample_image_shards, tmp_path):
    limit = 370_500 * 8 - 1  # just under the motorcycles' 741x500 label maps at 8 bytes per pixel
    args = ["masks", str(sample_image_shards), "--out", str(tmp_path), "--generator", "grid", "--no-progress",
            "--max-label-map-bytes", str(limit)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for path in list_shards(tmp_path) for row in read_rows(path)}
    failed = {note.id: note.reason for note in read_manifest(tmp_path).skipped}
    assert {image_id for image_id, row in rows.items() if row["num_regions"] == 0} == set(failed) == {
        "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg"
    }
    assert failed["motorcycle_left.png"] == f"LabelMapTooLarge: 741x500 needs a 2964000-byte label map, over the {limit}-byte limit"
    assert decode_label_map(rows["hubble_deep_field.jpg"]["mask"]["bytes"], "test").shape == (872, 1000)
    assert rows["rocket.jpg"]["num_regions"] == 16  # the grid generator's default 4x4 cells


class RawKeepingGrid(GridGenerator):
    """`grid` with the SAM family's default of keeping raw masks."""

    keeps_raw_masks = True


def test_a_generator_that_keeps_raw_masks_writes_them_beside_out_unless_told_not_to(sample_image_shards, tmp_path):
    generator = RawKeepingGrid(GridConfig(grid=3))
    summary = make_masks(grid_config(sample_image_shards, tmp_path / "labels"), generator)
    assert summary.raw == tmp_path / "labels-raw" and read_manifest(summary.raw).kind == "raw-masks"
    assert [path.name for path in list_shards(summary.raw)] == [path.name for path in list_shards(sample_image_shards)]
    assert make_masks(grid_config(sample_image_shards, tmp_path / "plain", keep_raw=False), generator).raw is None
    assert make_masks(grid_config(sample_image_shards, tmp_path / "grid")).raw is None  # grid keeps none by default
    assert not (tmp_path / "plain-raw").exists() and not (tmp_path / "grid-raw").exists()
    args = ["masks", str(sample_image_shards), "--out", str(tmp_path / "kept"), "--generator", "grid", "--keep-raw", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and f"raw masks in {tmp_path / 'kept-raw'}; set complete" in result.output, result.output


def test_raw_masks_added_to_a_finished_set_leave_its_label_maps_as_they_were(sample_image_shards, tmp_path):
    make_masks(grid_config(sample_image_shards, tmp_path / "labels"))
    before = snapshot(tmp_path / "labels")
    summary = make_masks(grid_config(sample_image_shards, tmp_path / "labels", raw=tmp_path / "raw"))
    assert len(summary.written) == 3 and snapshot(tmp_path / "labels") == before
    assert make_masks(grid_config(sample_image_shards, tmp_path / "labels", raw=tmp_path / "raw")).already_done == summary.written
    assert verify(VerifyConfig(images=sample_image_shards, masks=tmp_path / "labels", raw=tmp_path / "raw")).ok
