"""`segpic eval`: real `.segpic` files from real checkpoints on small real photos."""

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from model.bitstream import CodecIdentity, SegpicFile, decode_file, image_to_tensor, tensor_to_image
from model.checkpoints import load_codec, save_codec, save_official_checkpoint
from model.evaluation.quality import psnr
from model.evaluation.run import AVERAGED_METRICS, EvalConfig, evaluate, run_labels
from model.segpic import SegPIC
from model.wacnn import WACNN
from pipeline.cli import app
from pipeline.sample import sample_photo_paths
from pipeline.shards import IMAGE_SCHEMA, ShardWriter, shard_name

from random_codecs import random_segpic

WIDTHS = {"N": 24, "M": 40}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny random codecs, one per architecture, saved in our format after update()."""
    folder = tmp_path_factory.mktemp("checkpoints")
    segpic = random_segpic(0, **WIDTHS)
    paths = []
    for arch, model in (("segpic", segpic), ("wacnn", WACNN(**WIDTHS))):
        model.update()
        (folder / arch).mkdir()
        save_codec(folder / arch / "checkpoint.pt", model, arch, WIDTHS)
        paths.append(folder / arch / "checkpoint.pt")
    return tuple(paths)


def crop(index, box, mode="RGB"):
    with Image.open(sample_photo_paths()[index]) as image:
        return image.convert(mode).crop(box)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A colour PNG with sides off the 64 grid, a grayscale JPEG, and one too small for MS-SSIM."""
    folder = tmp_path_factory.mktemp("images")
    crop(0, (150, 40, 350, 210)).save(folder / "astronaut.png")
    crop(8, (200, 60, 380, 225), "L").save(folder / "camera.jpg", quality=90)
    crop(1, (100, 50, 200, 130)).save(folder / "chelsea.png")
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, checkpoints, images):
    out = tmp_path_factory.mktemp("eval")
    config = EvalConfig(
        checkpoints, images, out / "results.json", name="tiny", bitstreams=out / "bits", reconstructions=out / "recon"
    )
    evaluate(config)
    return config, json.loads(config.out.read_text())


def test_results_follow_compressai_eval_model_layout(evaluated):
    _, document = evaluated
    assert document["name"] == "tiny"
    assert document["description"].startswith("Inference (ans")
    assert list(document["results"]) == list(AVERAGED_METRICS)
    assert all(len(values) == 2 for values in document["results"].values())
    assert [entry["arch"] for entry in document["checkpoints"]] == ["segpic", "wacnn"]
    assert len(document["per_image"]) == 2 * 3


def test_points_are_the_means_of_the_per_image_rows(evaluated):
    _, document = evaluated
    for index, entry in enumerate(document["checkpoints"]):
        rows = [row for row in document["per_image"] if row["checkpoint"] == entry["path"]]
        for metric in ("psnr-rgb", "bpp", "encoding_time", "decoding_time"):
            assert document["results"][metric][index] == pytest.approx(np.mean([row[metric] for row in rows]))
        ms_ssim = [row["ms-ssim-rgb"] for row in rows if row["ms-ssim-rgb"] is not None]
        assert len(ms_ssim) == 2  # chelsea (100x80) is too small for five scales
        assert document["results"]["ms-ssim-rgb"][index] == pytest.approx(np.mean(ms_ssim))


def test_bpp_is_the_stream_payload_of_the_written_files(evaluated):
    """bpp = 8 × (file size − header and checksum) / (H·W): the streams stored in the file."""
    config, document = evaluated
    for row in document["per_image"]:
        label = "segpic" if "segpic" in row["checkpoint"] else "wacnn"
        path = config.bitstreams / label / f"{row['image']}.segpic"
        data = path.read_bytes()
        coded = SegpicFile.from_bytes(data)
        assert row["file_bytes"] == len(data) == path.stat().st_size
        assert row["stream_bytes"] == sum(len(stream) for stream in coded.streams) < len(data)
        assert (coded.height, coded.width) == (row["height"], row["width"])
        assert row["bpp"] == pytest.approx(8 * row["stream_bytes"] / (row["height"] * row["width"]), rel=1e-12)
        assert row["file_bpp"] == pytest.approx(8 * len(data) / (row["height"] * row["width"]), rel=1e-12)
        assert coded.mode == "portable"
        assert row["bpp"] > 0 and row["encoding_time"] > 0 and row["decoding_time"] > 0


def test_files_decode_to_the_saved_reconstructions_and_reported_psnr(evaluated, images):
    config, document = evaluated
    for checkpoint in config.checkpoints:
        model = load_codec(checkpoint)
        label = checkpoint.parent.name
        for name, suffix in (("astronaut", ".png"), ("camera", ".jpg")):
            data = (config.bitstreams / label / f"{name}.segpic").read_bytes()
            decoded = decode_file(model, data, CodecIdentity.of(model))
            with Image.open(images / f"{name}{suffix}") as source:
                original = image_to_tensor(source)
            with Image.open(config.reconstructions / label / f"{name}.png") as saved:
                assert np.array_equal(np.asarray(saved), np.asarray(tensor_to_image(decoded)))
            assert decoded.shape == original.shape
            row = next(r for r in document["per_image"] if r["image"] == name and r["checkpoint"] == str(checkpoint))
            assert row["psnr-rgb"] == pytest.approx(psnr(original, decoded), abs=1e-9)


def test_entropy_estimation_writes_no_files_and_sees_the_same_pictures(tmp_path, checkpoints, images, evaluated):
    _, coded = evaluated
    config = EvalConfig(
        checkpoints[:1], images, tmp_path / "estimate.json", entropy_estimation=True, bitstreams=tmp_path / "bits"
    )
    document = evaluate(config)
    assert document["description"] == "Inference (entropy estimation)"
    assert not (tmp_path / "bits").exists()
    assert all(row["file_bytes"] is None for row in document["per_image"])
    assert document["results"]["psnr-rgb"][0] == pytest.approx(coded["results"]["psnr-rgb"][0], abs=0.05)
    assert 0.5 < document["results"]["bpp"][0] / coded["results"]["bpp"][0] < 2


def test_image_shards_are_accepted(tmp_path, checkpoints):
    shards = tmp_path / "shards"
    with ShardWriter(shards / shard_name(0, 1), IMAGE_SCHEMA) as writer:
        for identifier, index in (("sample/coffee", 2), ("sample/rocket", 3)):
            buffer = io.BytesIO()
            picture = crop(index, (0, 0, 96, 72))
            picture.save(buffer, format="PNG")
            image = {"bytes": buffer.getvalue(), "path": None}
            writer.write({"id": identifier, "image": image, "width": 96, "height": 72})
    document = evaluate(EvalConfig(checkpoints[1:], shards, tmp_path / "r.json", bitstreams=tmp_path / "bits"))
    assert [row["image"] for row in document["per_image"]] == ["sample/coffee", "sample/rocket"]
    assert (tmp_path / "bits" / "checkpoint" / "sample_coffee.segpic").is_file()
    assert all(math.isfinite(row["psnr-rgb"]) for row in document["per_image"])


def test_run_labels_keep_checkpoints_apart(tmp_path):
    paths = [tmp_path / "sam" / "0.0018" / "checkpoint.pt", tmp_path / "sam" / "0.0067" / "checkpoint.pt"]
    assert run_labels(paths) == ["0.0018", "0.0067"]
    assert run_labels([tmp_path / "a" / "low.pt", tmp_path / "b" / "high.pt"]) == ["a-low", "b-high"]
    with pytest.raises(ValueError, match="twice"):
        run_labels([paths[0], paths[0]])


def test_cli_eval_prints_points_and_writes_json(tmp_path, checkpoints, images):
    out = tmp_path / "felzenszwalb.json"
    result = CliRunner().invoke(app, ["eval", str(checkpoints[1]), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "bpp" in result.output and "dB PSNR" in result.output
    assert json.loads(out.read_text())["name"] == "felzenszwalb"


def test_cli_eval_missing_checkpoint_is_one_line_and_exit_1(tmp_path, images):
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path / "none.pt"), "--images", str(images), "--out", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 1
    assert "no such checkpoint" in result.output and "Traceback" not in result.output


def test_cli_eval_empty_image_folder_is_one_line_and_exit_1(tmp_path, checkpoints):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        app, ["eval", str(checkpoints[1]), "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 1
    assert "no images" in result.output


@pytest.mark.slow
def test_published_layout_checkpoint_is_evaluated(tmp_path, images):
    """A checkpoint in the published file layout (published widths, ~330 MB) codes real files too."""
    torch.manual_seed(1)
    checkpoint = tmp_path / "segpic_published_layout.pth"
    save_official_checkpoint(checkpoint, SegPIC())
    small = tmp_path / "images"
    small.mkdir()
    crop(3, (0, 0, 64, 64)).save(small / "rocket.png")
    document = evaluate(EvalConfig((checkpoint,), small, tmp_path / "r.json", bitstreams=tmp_path / "bits"))
    assert document["checkpoints"][0]["arch"] == "segpic"
    assert (document["checkpoints"][0]["N"], document["checkpoints"][0]["M"]) == (192, 320)
    row = document["per_image"][0]
    assert row["stream_bytes"] * 8 / (64 * 64) == pytest.approx(row["bpp"], rel=1e-12)
    assert (tmp_path / "bits" / "segpic_published_layout" / "rocket.segpic").stat().st_size == row["file_bytes"]


def test_names_from_evaluates_exactly_the_listed_runs(tmp_path, checkpoints, images):
    """A study's run folder keeps runs of λ values it no longer lists: those are left out, saying so."""
    runs = tmp_path / "runs"
    for name in ("0.0035", "0.013", "0.0018"):
        (runs / name).mkdir(parents=True)
        (runs / name / "checkpoint.pt").write_bytes(checkpoints[0].read_bytes())
    (tmp_path / "params.yaml").write_text("train:\n  lambdas: [0.0035, 0.013]\n")
    result = CliRunner().invoke(app, [
        "eval", str(runs), "--names-from", f"{tmp_path / 'params.yaml'}:train.lambdas",
        "--images", str(images), "--out", str(tmp_path / "out.json"), "--entropy-estimation",
    ])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out.json").read_text())
    assert [entry["label"] for entry in document["checkpoints"]] == ["0.0035", "0.013"]
    assert f"left out {runs / '0.0018'}: 0.0018 is not in" in result.output


@pytest.mark.parametrize(("lambdas", "extra", "message"), [
    ("[0.0035, 0.0483]", [], "no run folder for 0.0483"),
    ("{a: 1}", [], "is not a list of names"),
    ("[0.0035]", ["second.pt"], "--names-from takes one folder of run folders"),
])
def test_names_from_refuses_what_it_cannot_select(tmp_path, checkpoints, images, lambdas, extra, message):
    runs = tmp_path / "runs"
    (runs / "0.0035").mkdir(parents=True)
    (runs / "0.0035" / "checkpoint.pt").write_bytes(checkpoints[0].read_bytes())
    (tmp_path / "params.yaml").write_text(f"train:\n  lambdas: {lambdas}\n")
    result = CliRunner().invoke(app, [
        "eval", str(runs), *extra, "--names-from", f"{tmp_path / 'params.yaml'}:train.lambdas",
        "--images", str(images), "--out", str(tmp_path / "out.json"),
    ])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.json").exists()


def test_results_record_each_checkpoints_lambda_and_the_image_set(tmp_path, images):
    """λ comes from the training state of our checkpoints; a published-layout file records none."""
    model = random_segpic(0, **WIDTHS)
    model.update()
    save_codec(tmp_path / "ours.pt", model, "segpic", WIDTHS, extra={"training": {"experiment": {"lmbda": 0.013}}})
    save_official_checkpoint(tmp_path / "published.pth.tar", model)
    out = tmp_path / "out.json"
    evaluate(EvalConfig((tmp_path / "ours.pt", tmp_path / "published.pth.tar"), images, out, entropy_estimation=True))
    document = json.loads(out.read_text())
    assert [entry["lmbda"] for entry in document["checkpoints"]] == [0.013, None]
    assert document["image_set"] == images.name
