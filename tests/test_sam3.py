"""The `sam3` generator on real photos, through `segpic masks`, with a small randomly initialised SAM 3.

The network is SAM 3's own builder at toy sizes (`random_sam3`), built once for the module and
saved as a `sam3.pt` that the command loads; only the package's CPU hole filler is off there
(see `random_sam3`), and `test_upscale_fills_small_holes_like_the_predictor` covers it.
"""

import gzip
import json
import types
from pathlib import Path

import numpy as np
import pytest
import segment_anything.automatic_mask_generator as stock_amg
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.label_map_format import decode_label_map
from pipeline.cli import app
from pipeline.generators import build_generator
from pipeline.generators.sam_family.sam3.network import DeviceRedirect, build_sam3, check_checkpoint, clip_vocabulary
from pipeline.generators.sam_family.sam3.segmenter import Sam3Segmenter
from pipeline.ingest import IngestConfig, ingest
from pipeline.label_maps import LabelMapRule, label_map_from_raw
from pipeline.raw_mask_format import dense_raw_masks
from pipeline.mask_labelling import decode_rgb
from pipeline.shards import list_shards, read_rows
from random_sam3 import save_as_sam3_checkpoint, small_sam3_builder
from random_sams import photo, records_as_raw_masks
from repaint_checks import assert_repaint_writes_what_masks_wrote, overlapping_images

RULE = LabelMapRule(speck_area=4, max_regions=64)
# Random weights predict IoUs near 0.5: the thresholds keep some candidates and drop others.
POINTS = dict(
    points_per_side=4, points_per_batch=6, pred_iou_thresh=0.5, stability_score_thresh=0.3,
    stability_score_offset=0.01, box_nms_thresh=0.8, min_mask_region_area=6,
)
CROPS = dict(POINTS, points_per_side=3, crop_n_layers=1, crop_nms_thresh=0.8)
CONCEPTS = dict(mode="concepts", prompts="cat, object", confidence_threshold=0.2)


@pytest.fixture(scope="module")
def sam3(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The small SAM 3 (seeded) and its weights as a sam3.pt."""
    with small_sam3_builder():
        torch.manual_seed(0)
        model = build_sam3(clip_vocabulary(), torch.device("cpu"))
    return model, save_as_sam3_checkpoint(model, tmp_path_factory.mktemp("weights") / "sam3.pt")


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> Path:
    """Two real photos of different sizes and aspect ratios, ingested into one image shard."""
    folder = tmp_path_factory.mktemp("photos")
    for index, side in ((0, 72), (1, 100)):
        Image.fromarray(photo(index, side)).save(folder / f"photo{index}.png")
    out = tmp_path_factory.mktemp("image_shards")
    ingest(IngestConfig(source=str(folder), out=out))
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Checkpoint hashes are remembered under $SEGPIC_CACHE; keep the user's cache out of tests."""
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))


def settings_args(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"sam3.{key}={value}")]


def run_masks(images: Path, out: Path, checkpoint: Path, settings: dict):
    """`segpic masks --generator sam3` with SAM 3's builder at the small sizes of the checkpoint."""
    args = ["masks", str(images), "--out", str(out), "--generator", "sam3", "--no-progress",
            "--set", f"sam3.checkpoint={checkpoint}", "--set", f"speck_area={RULE.speck_area}",
            "--set", f"max_regions={RULE.max_regions}", *settings_args(settings)]
    with small_sam3_builder():
        return CliRunner().invoke(app, args)


def mask_rows(images: Path, masks: Path) -> list[tuple[np.ndarray, dict]]:
    """(decoded photo, mask row) pairs, in shard order."""
    pairs = []
    for shard in list_shards(images):
        for image_row, mask_row in zip(read_rows(shard), read_rows(masks / shard.name)):
            assert image_row["id"] == mask_row["id"]
            pairs.append((decode_rgb(image_row["image"]["bytes"]), mask_row))
    return pairs


def assert_verified(images: Path, masks: Path) -> None:
    result = CliRunner().invoke(app, ["verify", str(images), "--masks", str(masks)])
    assert result.exit_code == 0, result.output
    assert "verify: ok" in result.output


class PredictInstPredictor:
    """SamPredictor's surface over SAM 3's `predict_inst`, one prompt batch per call (the plain reference)."""

    def __init__(self, sam3_model: torch.nn.Module) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor

        self.sam3 = sam3_model
        self.processor = Sam3Processor(sam3_model, device="cpu")
        self.model = types.SimpleNamespace(mask_threshold=sam3_model.inst_interactive_predictor.mask_threshold)
        self.transform = types.SimpleNamespace(apply_coords=lambda points, size: points)  # predict_inst takes pixels
        self.device = torch.device("cpu")

    def set_image(self, crop: np.ndarray) -> None:
        self.state = self.processor.set_image(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1))

    def reset_image(self) -> None:
        self.state = None

    def predict_torch(self, points, labels, multimask_output, return_logits):
        masks, ious, low_res = self.sam3.predict_inst(
            self.state, point_coords=points.numpy(), point_labels=labels.numpy(),
            multimask_output=multimask_output, return_logits=return_logits,
        )
        count, height, width = len(points), *masks.shape[-2:]
        return torch.from_numpy(masks).reshape(count, -1, height, width), torch.from_numpy(ious).reshape(count, -1), low_res


def reference_label_map(model: torch.nn.Module, image: np.ndarray, settings: dict) -> np.ndarray:
    """Stock SamAutomaticMaskGenerator (grid, crops, filters, NMS, small regions) over predict_inst, then the rule."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stock_amg, "SamPredictor", PredictInstPredictor)
        records = stock_amg.SamAutomaticMaskGenerator(model, **settings).generate(image)
    assert records, "the reference found no mask: the test would compare empty maps"
    return label_map_from_raw(records_as_raw_masks(records, *image.shape[:2]), RULE).label_map


def test_points_mode_through_segpic_masks_equals_stock_amg_over_predict_inst(sam3, image_shards, tmp_path, one_torch_thread):
    model, checkpoint = sam3
    result = run_masks(image_shards, tmp_path / "masks", checkpoint, POINTS)
    assert result.exit_code == 0, result.output
    assert_verified(image_shards, tmp_path / "masks")
    pairs = mask_rows(image_shards, tmp_path / "masks")
    assert len(pairs) == 2
    for image, row in pairs:
        ours = decode_label_map(row["mask"]["bytes"], row["id"])
        assert row["num_regions"] > 1
        np.testing.assert_array_equal(ours, reference_label_map(model, image, POINTS))


def test_points_mode_raw_masks_overlap_and_repaint_writes_segpic_masks_label_maps(sam3, image_shards, tmp_path, one_torch_thread):
    _, checkpoint = sam3
    overlapping = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    result = run_masks(image_shards, tmp_path / "masks", checkpoint, overlapping)
    assert result.exit_code == 0, result.output
    raw = tmp_path / "masks-raw"  # kept by default for the SAM family
    assert overlapping_images(raw) == [True, True]
    rule = {"speck_area": RULE.speck_area, "max_regions": RULE.max_regions}
    assert_repaint_writes_what_masks_wrote(image_shards, tmp_path / "masks", raw, rule, tmp_path / "repainted")


def test_points_mode_over_crops_equals_stock_amg_over_predict_inst(sam3, one_torch_thread):
    model, _ = sam3
    image = photo(3, 80)
    generator = build_generator("sam3", {**CROPS, "speck_area": RULE.speck_area, "max_regions": RULE.max_regions}, model=model)
    ours = generator.generate(image, "rocket")
    assert ours.stats.num_regions > 1
    np.testing.assert_array_equal(ours.label_map, reference_label_map(model, image, CROPS))


def test_concepts_mode_through_segpic_masks_with_points_filling_the_rest(sam3, image_shards, tmp_path, one_torch_thread):
    _, checkpoint = sam3
    settings = {**CONCEPTS, "fill_with_points": "true", "points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    result = run_masks(image_shards, tmp_path / "masks", checkpoint, settings)
    assert result.exit_code == 0, result.output
    assert_verified(image_shards, tmp_path / "masks")
    rows = [row for _, row in mask_rows(image_shards, tmp_path / "masks")]
    assert len(rows) == 2 and all(row["num_regions"] > 1 and 0.0 < row["coverage"] <= 1.0 for row in rows)
    raw = tmp_path / "masks-raw"
    rule = {"speck_area": RULE.speck_area, "max_regions": RULE.max_regions}
    assert_repaint_writes_what_masks_wrote(image_shards, tmp_path / "masks", raw, rule, tmp_path / "repainted")
    kept = [mask for path in list_shards(raw) for row in read_rows(path) for mask in row["masks"]]
    concepts = [mask for mask in kept if mask["prompt"] is not None]
    filled = [mask for mask in kept if mask["prompt"] is None]
    assert {mask["prompt"] for mask in concepts} <= {"cat", "object"} and concepts and filled
    assert all(mask["score"] > CONCEPTS["confidence_threshold"] and mask["predicted_iou"] is None for mask in concepts)
    assert all(mask["score"] is None and mask["predicted_iou"] is not None and mask["stability_score"] is not None for mask in filled)
    exported = CliRunner().invoke(app, ["export-masks", str(raw), "--out", str(tmp_path / "coco.json")])
    assert exported.exit_code == 0, exported.output
    annotations = json.loads((tmp_path / "coco.json").read_text())["annotations"]
    assert sorted(annotation["prompt"] for annotation in annotations if "prompt" in annotation) == sorted(m["prompt"] for m in concepts)


def test_concept_instances_ranked_by_score_make_the_label_map(sam3, one_torch_thread):
    """Without filling, the map is the rule applied to Sam3Processor's own instances, highest score first."""
    from sam3.model.sam3_image_processor import Sam3Processor

    model, _ = sam3
    image = photo(2, 64)
    generator = build_generator("sam3", {**CONCEPTS, "speck_area": RULE.speck_area, "max_regions": RULE.max_regions}, model=model)
    ours = generator.generate(image, "coffee")

    processor = Sam3Processor(model, device="cpu", confidence_threshold=CONCEPTS["confidence_threshold"])
    state = processor.set_image(torch.from_numpy(image.copy()).permute(2, 0, 1))
    instances = []
    with DeviceRedirect(torch.device("cpu")):
        for prompt in ("cat", "object"):
            found = processor.set_text_prompt(prompt, state)
            instances += [(float(score), mask[0].numpy()) for score, mask in zip(found["scores"], found["masks"])]
    assert instances, "no instance above the threshold: lower it for these random weights"
    ranked = sorted(instances, key=lambda instance: -instance[0])  # stable: prompt order breaks ties
    expected = label_map_from_raw(
        dense_raw_masks(np.stack([mask for _, mask in ranked]), scores=[score for score, _ in ranked]), RULE
    )
    np.testing.assert_array_equal(ours.label_map, expected.label_map)
    assert ours.stats.mean_iou == pytest.approx(np.mean([score for score, _ in instances]))


def test_fast_mode_runs_the_network_in_bf16_and_labels_every_pixel(sam3, one_torch_thread):
    model, _ = sam3
    image = photo(0, 64)
    fast = build_generator("sam3", {**POINTS, "fast": "true"}, model=model)
    (embedding,) = fast.segmenter.embed([image])
    assert embedding.state["backbone_out"]["vision_features"].dtype == torch.bfloat16
    result = fast.generate(image, "astronaut")
    assert result.label_map.shape == image.shape[:2] and result.stats.num_regions >= 1
    assert fast.settings_hash != build_generator("sam3", POINTS, model=model).settings_hash


def test_upscale_fills_small_holes_like_the_predictor(sam3, monkeypatch):
    model, _ = sam3
    segmenter = Sam3Segmenter(model)
    embedding = types.SimpleNamespace(original_size=(72, 96))
    logits = torch.full((1, 288, 288), 5.0)
    logits[0, 100:104, 100:104] = -5.0  # a 16-pixel hole inside the mask
    assert (segmenter.upscale(embedding, logits) <= 0).any()  # hole filling is off in the small model
    monkeypatch.setattr(segmenter.predictor._transforms, "max_hole_area", 256.0)  # the published predictor's value
    assert (segmenter.upscale(embedding, logits) > 0).all()


def test_device_redirect_places_hard_coded_cuda_tensors_on_the_chosen_device():
    with DeviceRedirect(torch.device("cpu")):
        zeros = torch.zeros(3, device="cuda")
        pinned = torch.ones(2).pin_memory()
        moved = torch.ones(2).cuda()
    assert zeros.device.type == pinned.device.type == moved.device.type == "cpu"


def test_settings_hash_follows_mode_prompts_and_weights(sam3, tmp_path):
    model, checkpoint = sam3
    other_weights = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["detector.dot_prod_scoring.prompt_proj.bias"] = state["model"]["detector.dot_prod_scoring.prompt_proj.bias"] + 1
    torch.save(state, other_weights)

    def hash_of(**options) -> str:
        with small_sam3_builder():
            return build_generator("sam3", {"checkpoint": str(checkpoint), **options}).settings_hash

    points, concepts = hash_of(), hash_of(mode="concepts")
    assert points != concepts
    assert hash_of(mode="concepts", prompts="cat, dog") != concepts
    assert hash_of(checkpoint=str(other_weights)) != points
    assert hash_of(prompts="cat, dog") == points  # points mode reads no prompt
    assert hash_of(device="cpu", batch_size=2) == points  # where it runs does not change the masks


@pytest.mark.parametrize("problem", ["missing", "not torch", "pickled objects", "other network"])
def test_a_wrong_checkpoint_stops_before_the_first_shard_with_one_line(problem, sam3, image_shards, tmp_path):
    _, checkpoint = sam3
    bad = tmp_path / "sam3.pt"
    if problem == "not torch":
        bad.write_bytes(b"<html>Access to model facebook/sam3 is restricted</html>")
    elif problem == "pickled objects":
        torch.save({"model": types.SimpleNamespace(weights="run me")}, bad)
    elif problem == "other network":
        state = torch.load(checkpoint, weights_only=True)
        del state["model"]["tracker.sam_mask_decoder.iou_prediction_head.layers.0.weight"]
        torch.save(state, bad)
    result = run_masks(image_shards, tmp_path / "masks", bad, {})
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert str(bad) in result.output
    assert not list((tmp_path / "masks").glob("*.parquet"))


def test_the_published_network_is_checked_on_the_meta_device(sam3):
    """SAM 3's real builder (860 M parameters) runs on the meta device: the small weights do not fit it."""
    _, small_weights = sam3
    with pytest.raises(ValueError, match=r"does not fit the image model: \d+ parameter\(s\) missing or of another shape"):
        check_checkpoint(small_weights, clip_vocabulary())


def test_no_checkpoint_names_where_to_get_it(image_shards, tmp_path):
    result = CliRunner().invoke(app, ["masks", str(image_shards), "--out", str(tmp_path / "masks"), "--generator", "sam3"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "checkpoint=PATH" in result.output and "facebook/sam3" in result.output


@pytest.mark.parametrize("problem", ["missing", "not a vocabulary"])
def test_a_wrong_vocabulary_stops_with_one_line(problem, sam3, image_shards, tmp_path):
    _, checkpoint = sam3
    vocabulary = tmp_path / "bpe.txt.gz"
    if problem == "not a vocabulary":
        with gzip.open(vocabulary, "wt") as file:
            file.write("hello\nworld\n")
    result = run_masks(image_shards, tmp_path / "masks", checkpoint, {"vocabulary": vocabulary})
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"error: SAM 3 vocabulary {vocabulary}" in result.output


def test_bad_sam3_settings_are_refused_by_name(sam3):
    _, checkpoint = sam3
    with pytest.raises(ValueError, match="unknown sam3 mode 'everything'"):
        build_generator("sam3", {"checkpoint": str(checkpoint), "mode": "everything"})
    with pytest.raises(ValueError, match="needs at least one text prompt"):
        build_generator("sam3", {"checkpoint": str(checkpoint), "mode": "concepts", "prompts": " , "})
    with pytest.raises(ValueError, match="confidence_threshold must be in"):
        build_generator("sam3", {"checkpoint": str(checkpoint), "confidence_threshold": "1.5"})
