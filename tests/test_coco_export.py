"""`segpic export-masks`: raw masks as a COCO file that pycocotools loads and decodes to exactly the generator's masks."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.generators import build_generator
from pipeline.ingest import IngestConfig, ingest
from pipeline.mask_labelling import decode_rgb
from pipeline.masks import MasksConfig, make_masks
from pipeline.shards import list_shards, read_rows
from random_sams import photo, tiny_sam

SAM = {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def sam_raw(tmp_path_factory, one_torch_thread):
    """Raw masks of the small SAM on three photos in three image shards, and the image shards."""
    folder = tmp_path_factory.mktemp("photos")
    for index, side in ((0, 72), (1, 100), (2, 128)):
        Image.fromarray(photo(index, side)).save(folder / f"photo{index}.png")
    images = tmp_path_factory.mktemp("images")
    ingest(IngestConfig(source=str(folder), out=images, shard_bytes=1, row_group_bytes=1))
    assert len(list_shards(images)) == 3
    raw = tmp_path_factory.mktemp("sam") / "raw"
    generator = build_generator("sam", SAM, model=tiny_sam(3))
    make_masks(MasksConfig(images=images, out=None, raw=raw, generator="sam", options=tuple(SAM.items())), generator)
    return images, raw


def export(raw, out, *args: str):
    return CliRunner().invoke(app, ["export-masks", str(raw), "--out", str(out), *args])


def test_pycocotools_loads_the_file_and_decodes_exactly_the_masks_the_generator_made(sam_raw, tmp_path):
    images, raw = sam_raw
    result = export(raw, tmp_path / "coco.json")
    assert result.exit_code == 0, result.output
    coco = COCO(str(tmp_path / "coco.json"))
    engine = build_generator("sam", SAM, model=tiny_sam(3)).engine
    rows = [row for shard in list_shards(images) for row in read_rows(shard)]
    assert [image["file_name"] for image in coco.loadImgs(coco.getImgIds())] == [row["id"] for row in rows]
    assert sorted(coco.getAnnIds()) == list(range(1, len(coco.dataset["annotations"]) + 1))  # one id each
    for number, row in enumerate(rows, start=1):
        found = engine.masks([decode_rgb(row["image"]["bytes"])])[0]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[number]))
        assert len(annotations) == len(found.masks) > 1
        for annotation, mask, iou, stability in zip(annotations, found.masks, found.iou_preds, found.stability_scores):
            decoded = coco_mask.decode(annotation["segmentation"])
            assert np.array_equal(decoded.astype(bool), mask.numpy()) and annotation["area"] == int(mask.sum())
            assert annotation["predicted_iou"] == pytest.approx(float(iou)) and annotation["stability_score"] == pytest.approx(float(stability))
            assert annotation["bbox"] == coco_mask.toBbox(annotation["segmentation"]).astype(int).tolist()
    assert result.output.strip() == f"{tmp_path / 'coco.json'}: 3 image(s), {len(coco.getAnnIds())} annotation(s)"


def test_one_shard_at_a_time_numbers_from_one(sam_raw, tmp_path):
    _, raw = sam_raw
    second = list_shards(raw)[1].name
    assert export(raw, tmp_path / "second.json", "--shard", second).exit_code == 0
    data = json.loads((tmp_path / "second.json").read_text())
    assert [image["id"] for image in data["images"]] == list(range(1, len(data["images"]) + 1))
    assert data["annotations"][0]["id"] == 1 and data["info"]["shards"] == [second]
    assert [image["file_name"] for image in data["images"]] == [row["id"] for row in read_rows(raw / second)]


def test_bad_inputs_are_one_line_and_write_nothing(sam_raw, tmp_path):
    images, raw = sam_raw
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    cases = [
        (export(raw, existing), "exists; give --overwrite"),
        (export(images, tmp_path / "a.json"), "holds images shards, not raw mask shards"),
        (export(tmp_path / "nothing", tmp_path / "b.json"), "no manifest.json"),
        (export(raw, tmp_path / "c.json", "--shard", "part-00009-of-00009.parquet"), "has no shard 'part-00009-of-00009.parquet'"),
    ]
    for result, message in cases:
        assert result.exit_code == 1 and result.output.startswith("error: ") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert existing.read_text() == "{}" and not list(tmp_path.glob("[abc].json"))
    assert export(raw, existing, "--overwrite").exit_code == 0 and json.loads(existing.read_text())["images"]


def test_a_truncated_raw_shard_is_named_and_nothing_is_written(sam_raw, tmp_path):
    _, raw = sam_raw
    copy = tmp_path / "raw"
    copy.mkdir()
    for path in raw.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    damaged = list_shards(copy)[0]
    damaged.write_bytes(damaged.read_bytes()[:-100])
    result = export(copy, tmp_path / "coco.json")
    assert result.exit_code == 1 and f"error: {damaged}: size or sha256 differs" in result.output
    assert not (tmp_path / "coco.json").exists() and not list(tmp_path.glob(".coco.json.*"))
