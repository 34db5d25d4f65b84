"""`segpic repaint`: label maps from kept raw masks, byte-identical to `segpic masks`, without the network.

SAM here is segment-anything's own modules at toy sizes with random weights (`random_sams`),
handed to the masks stage; `test_sam2.py` and `test_sam3.py` check SAM 2.1 and SAM 3 through
`segpic masks` itself. Random weights with the filters off give many overlapping masks, which
is where the rule (paint order, holes, specks) decides the partition.
"""

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.generators import build_generator
from pipeline.ingest import IngestConfig, ingest
from pipeline.manifest import read_manifest
from pipeline.masks import MasksConfig, make_masks
from pipeline.repaint import RepaintConfig, repaint
from pipeline.shards import list_shards, read_rows
from random_sams import photo, tiny_sam
from repaint_checks import assert_repaint_writes_what_masks_wrote, overlapping_images, shard_bytes

SAM = {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 1.0}
RULE = {"speck_area": 4, "max_regions": 64}
COARSE = {"speck_area": 4, "max_regions": 64, "max_masks": 3, "rank_masks_by": "area"}


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """Two real photos of different sizes, one per image shard."""
    folder = tmp_path_factory.mktemp("photos")
    for index, side in ((0, 72), (1, 100)):
        Image.fromarray(photo(index, side)).save(folder / f"photo{index}.png")
    out = tmp_path_factory.mktemp("images")
    ingest(IngestConfig(source=str(folder), out=out, shard_bytes=1, row_group_bytes=1))
    assert len(list_shards(out)) == 2
    return out


def sam_masks(images, out, rule: dict):
    """`segpic masks`' stage with the small SAM; label maps in `out`, raw masks kept (by default) in `out`-raw."""
    generator = build_generator("sam", {**SAM, **rule}, model=tiny_sam(3))
    config = MasksConfig(images=images, out=out, generator="sam", options=tuple({**SAM, **rule}.items()))
    return make_masks(config, generator)


@pytest.fixture(scope="module")
def sam_run(two_shards, tmp_path_factory, one_torch_thread):
    """The small SAM's label maps (by RULE) and raw masks of the two photos."""
    out = tmp_path_factory.mktemp("sam") / "labels"
    summary = sam_masks(two_shards, out, RULE)
    assert summary.raw == out.with_name("labels-raw") and summary.complete
    return out, summary.raw


def test_sam_raw_masks_overlap_and_repaint_writes_segpic_masks_label_maps(two_shards, sam_run, tmp_path):
    labels, raw = sam_run
    assert overlapping_images(raw) == [True, True]
    assert_repaint_writes_what_masks_wrote(two_shards, labels, raw, RULE, tmp_path / "repainted")
    coarse = tmp_path / "coarse"
    sam_masks(two_shards, coarse, COARSE)  # the network again, with the other rule
    assert shard_bytes(coarse) != shard_bytes(labels)
    assert shard_bytes(coarse.with_name("coarse-raw")) == shard_bytes(raw)  # the rule does not touch the raw masks
    assert_repaint_writes_what_masks_wrote(two_shards, coarse, raw, COARSE, tmp_path / "coarse-repainted")


def test_a_repainted_set_names_the_raw_masks_and_the_rule_it_was_made_with(sam_run, tmp_path):
    labels, raw = sam_run
    repaint(RepaintConfig(raw=raw, out=tmp_path / "coarse", options=tuple(COARSE.items())))
    settings = read_manifest(tmp_path / "coarse").settings
    assert settings["rule"] == COARSE and settings["config"] == read_manifest(raw).settings["config"]
    assert settings["weights"] == "injected" and read_manifest(labels).settings["rule"] == RULE
    regions = [row["num_regions"] for path in list_shards(tmp_path / "coarse") for row in read_rows(path)]
    assert all(count <= 4 for count in regions)  # three masks and what they leave uncovered, at most


@pytest.fixture
def felzenszwalb_raw(two_shards, tmp_path):
    """Raw masks only (no label maps) of the two photos, from the weight-free generator."""
    raw = tmp_path / "raw"
    result = CliRunner().invoke(app, ["masks", str(two_shards), "--raw", str(raw), "--generator", "felzenszwalb", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "raw-raw").exists() and read_manifest(raw).kind == "raw-masks"
    return raw


def snapshot(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def one_error_line(result, *parts: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(part in lines[0] for part in parts), result.output


def run_repaint(raw, out, *args: str):
    return CliRunner().invoke(app, ["repaint", str(raw), "--out", str(out), "--no-progress", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "max_regions=0"], "max_regions must be in 1..65536"),
        (["--set", "rank_masks_by=colour"], "rank_masks_by must be one of score, area"),
        (["--set", "points_per_side=8"], "unknown option(s) points_per_side"),
    ],
)
def test_bad_rule_settings_are_one_line_and_nothing_is_written(felzenszwalb_raw, tmp_path, args, message):
    before = snapshot(felzenszwalb_raw)
    one_error_line(run_repaint(felzenszwalb_raw, tmp_path / "labels", *args), message)
    assert not (tmp_path / "labels").exists() and snapshot(felzenszwalb_raw) == before


def test_a_folder_without_raw_masks_is_refused(two_shards, felzenszwalb_raw, tmp_path):
    one_error_line(run_repaint(tmp_path / "empty", tmp_path / "a"), "no manifest.json", "raw mask shard folder")
    one_error_line(run_repaint(two_shards, tmp_path / "b"), "holds images shards, not raw mask shards")
    repaint(RepaintConfig(raw=felzenszwalb_raw, out=tmp_path / "labels"))
    one_error_line(run_repaint(tmp_path / "labels", tmp_path / "c"), "holds masks shards, not raw mask shards")
    one_error_line(run_repaint(felzenszwalb_raw, felzenszwalb_raw), "is the raw mask folder")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_truncated_raw_shard_is_named_before_anything_is_written(two_shards, felzenszwalb_raw, tmp_path):
    damaged = list_shards(felzenszwalb_raw)[1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    one_error_line(run_repaint(felzenszwalb_raw, tmp_path / "labels"), str(damaged), "sha256 differs")
    assert not list((tmp_path / "labels").glob("*.parquet"))
    verified = CliRunner().invoke(app, ["verify", str(two_shards), "--raw", str(felzenszwalb_raw)])
    assert verified.exit_code == 1 and f"{damaged}: size or sha256 differs from the manifest" in verified.output


def raw_only(images, raw, *options: str) -> None:
    args = ["masks", str(images), "--raw", str(raw), "--generator", "felzenszwalb", "--no-progress", *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def test_a_finished_set_of_another_rule_network_or_image_set_is_refused_and_left_as_it_is(two_shards, felzenszwalb_raw, tmp_path):
    labels = tmp_path / "labels"
    repaint(RepaintConfig(raw=felzenszwalb_raw, out=labels, options=(("max_regions", 8),)))
    before = snapshot(labels)
    one_error_line(run_repaint(felzenszwalb_raw, labels, "--set", "max_regions=9"), "was made with other settings", "use another --out")
    raw_only(two_shards, tmp_path / "finer", "--set", "min_size=20")
    one_error_line(run_repaint(tmp_path / "finer", labels, "--set", "max_regions=8"), "was made with other settings")
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in (2, 3):  # other photos, in shards of the same names
        Image.fromarray(photo(index, 128)).save(photos / f"photo{index}.png")
    ingest(IngestConfig(source=str(photos), out=tmp_path / "other-images", shard_bytes=1, row_group_bytes=1))
    raw_only(tmp_path / "other-images", tmp_path / "other-raw")
    one_error_line(run_repaint(tmp_path / "other-raw", labels, "--set", "max_regions=8"), "made from another image set")
    assert snapshot(labels) == before


def test_a_killed_repaint_resumes_to_the_same_shards(felzenszwalb_raw, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    repaint(RepaintConfig(raw=felzenszwalb_raw, out=reference))
    import pipeline.repaint as module

    original, calls = module.write_outputs, []

    def killed_on_the_second_shard(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "write_outputs", killed_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        repaint(RepaintConfig(raw=felzenszwalb_raw, out=tmp_path / "labels"))
    monkeypatch.setattr(module, "write_outputs", original)
    summary = repaint(RepaintConfig(raw=felzenszwalb_raw, out=tmp_path / "labels"))
    assert summary.already_done == [calls[0]] and summary.written == [calls[1]] and summary.complete
    assert shard_bytes(tmp_path / "labels") == shard_bytes(reference)


def test_a_second_repaint_into_the_same_out_is_refused_while_the_first_holds_it(felzenszwalb_raw, tmp_path, lock_held_by_another_process):
    out = tmp_path / "labels"
    with lock_held_by_another_process(out):
        one_error_line(run_repaint(felzenszwalb_raw, out), "being written by another segpic run")
        assert not list(out.glob("*.parquet"))


def test_rule_settings_come_from_a_settings_file_and_set_wins(felzenszwalb_raw, tmp_path):
    settings = tmp_path / "rule.json"
    settings.write_text('{"max_regions": 5, "speck_area": 0}')
    result = run_repaint(felzenszwalb_raw, tmp_path / "labels", "--settings", str(settings), "--set", "max_regions=3")
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "labels").settings["rule"] == {"speck_area": 0, "max_regions": 3}
    counts = [row["num_regions"] for path in list_shards(tmp_path / "labels") for row in read_rows(path)]
    assert max(counts) == 3 and min(counts) >= 1


def test_raw_only_runs_refuse_rule_settings(two_shards, tmp_path):
    args = ["masks", str(two_shards), "--raw", str(tmp_path / "raw"), "--generator", "grid", "--set", "speck_area=8"]
    one_error_line(CliRunner().invoke(app, args), "speck_area: label-map rule settings", "segpic repaint")
    assert not (tmp_path / "raw").exists()
    args = ["masks", str(two_shards), "--out", str(tmp_path / "same"), "--raw", str(tmp_path / "same"), "--generator", "grid"]
    one_error_line(CliRunner().invoke(app, args), "is the --raw folder")
    one_error_line(CliRunner().invoke(app, ["masks", str(two_shards), "--generator", "grid"]), "give --out")
