"""A new user's slips in the data stage, through `segpic`: each gets one useful line and a way forward,
and leaves what was already written as it was."""

import http.server
import json
import shutil
import threading
import time
import urllib.request

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.generators import build_generator
from pipeline.manifest import read_manifest
from pipeline.sample import sample_photo_paths
from sam_checkpoint_files import write_sam2_checkpoint, write_sam_checkpoint
from wrong_use import closed_port, lines_of, one_error_line, run_segpic, snapshot

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoint files of every published SAM 1 and SAM 2.1 size (tensor names and shapes only), and broken ones."""
    folder = tmp_path_factory.mktemp("checkpoints")
    files = {model: write_sam_checkpoint(folder / f"sam_{model}.pth", model) for model in ("vit_b", "vit_l", "vit_h")}
    for model in ("tiny", "small", "base_plus", "large"):
        files[model] = write_sam2_checkpoint(folder / f"sam2.1_hiera_{model}.pt", model)
    files["sam2-first-release"] = write_sam2_checkpoint(folder / "sam2_hiera_large.pt", "large", release="2")
    files["text"] = folder / "sam_vit_h_4b8939.pth.txt"
    files["text"].write_text("<html>403 Forbidden</html>\n")
    files["truncated"] = folder / "sam_vit_h_cut.pth"
    files["truncated"].write_bytes(files["vit_h"].read_bytes()[:20_000])
    return files


@pytest.mark.parametrize("model", ["vit_b", "vit_l", "vit_h", "tiny", "small", "base_plus", "large"])
def test_the_model_size_is_read_from_the_checkpoint(model, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path))
    generator = "sam" if model.startswith("vit") else "sam2"
    built = build_generator(generator, {"checkpoint": str(checkpoints[model])})
    assert built.settings()["config"]["model"] == model


@pytest.mark.parametrize(
    ("generator", "settings", "file", "fragments"),
    [
        ("sam", ["model=vit_h"], "vit_b", ["holds SAM vit_b, not vit_h", "pass model=vit_b, or leave model out"]),
        ("sam2", ["model=tiny"], "large", ["holds SAM 2.1 large, not tiny", "pass model=large"]),
        ("sam2", [], "vit_b", ["holds SAM vit_b, not SAM 2.1", "--generator sam"]),
        ("sam", [], "large", ["holds SAM 2.1 large, not SAM", "--generator sam2"]),
        ("sam3", [], "vit_h", ["holds SAM vit_h, not SAM 3", "--generator sam"]),
        ("sam2", [], "sam2-first-release", ["holds SAM 2 large (the first release", "sam2.1_hiera_large.pt"]),
        ("sam", [], "text", ["not a torch checkpoint", "<html>403 Forbidden"]),
        ("sam", [], "truncated", ["truncated: a torch checkpoint cut short", "download or copy it again"]),
    ],
)
def test_a_checkpoint_of_another_size_or_family_is_named_in_one_line(
    generator, settings, file, fragments, checkpoints, sample_image_shards, tmp_path, monkeypatch
):
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    before = snapshot(sample_image_shards)
    arguments = ["masks", str(sample_image_shards), "--generator", generator, "--out", str(tmp_path / "masks"),
                 "--set", f"checkpoint={checkpoints[file]}", *(f"--set={setting}" for setting in settings), "--no-progress"]
    line = one_error_line(runner.invoke(app, arguments), str(checkpoints[file]), *fragments)
    assert len(line) < 300
    assert not (tmp_path / "masks").exists() and snapshot(sample_image_shards) == before


@pytest.mark.slow
def test_a_checkpoint_without_a_model_just_works_and_degenerate_masks_are_flagged(checkpoints, tmp_path, monkeypatch):
    """An all-zero vit_b, as an untrained or wrong file would be: it runs, and the run says its masks are empty."""
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    assert runner.invoke(app, ["ingest", "sample", "--limit", "1", "--out", str(images), "--no-progress"]).exit_code == 0
    arguments = ["masks", str(images), "--generator", "sam", "--out", str(tmp_path / "masks"), "--no-progress",
                 "--set", f"checkpoint={checkpoints['vit_b']}", "--set", "points_per_side=2", "--set", "device=cpu"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "masks").settings["config"]["model"] == "vit_b"
    summary, warning = lines_of(result.output)
    assert summary.endswith("set complete, 1.0 regions/image, 0% of pixels covered")
    assert warning.startswith("warning: ") and "1 of 1 images got no mask at all" in warning


def blank_panoptic_pngs(images, folder):
    """A panoptic PNG of id 0 (unlabelled) everywhere for every image: a mask source that found nothing."""
    folder.mkdir()
    for path in sample_photo_paths():
        with Image.open(path) as photo:
            Image.new("RGB", photo.size).save(folder / f"{path.stem}.png")


def test_masks_that_cover_nothing_end_with_a_warning_and_good_ones_do_not(sample_image_shards, tmp_path):
    blank_panoptic_pngs(sample_image_shards, tmp_path / "panoptic")
    arguments = ["masks", str(sample_image_shards), "--generator", "coco-panoptic", "--out", str(tmp_path / "empty"),
                 "--set", f"panoptic_dir={tmp_path / 'panoptic'}", "--no-progress"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    summary, warning = lines_of(result.output)
    assert "set complete, 1.0 regions/image, 0% of pixels covered" in summary
    assert warning == (
        f"warning: {tmp_path / 'empty'}: 10 of 10 images got no mask at all (0 % coverage, one region); "
        "check the generator's weights and settings before training on these masks"
    )
    result = runner.invoke(app, ["masks", str(sample_image_shards), "--generator", "grid", "--out", str(tmp_path / "grid"), "--no-progress"])
    assert result.exit_code == 0 and lines_of(result.output) == [
        f"{tmp_path / 'grid'}: wrote 3 shard(s), 10 image(s), 0 failed; 0 shard(s) already done; "
        "set complete, 16.0 regions/image, 100% of pixels covered"
    ]


def test_a_misspelt_generator_prefix_is_refused_with_the_known_generators(sample_image_shards, tmp_path):
    arguments = ["masks", str(sample_image_shards), "--generator", "felzenszwalb", "--out", str(tmp_path / "masks")]
    one_error_line(
        runner.invoke(app, [*arguments, "--set", "felzenzwalb.scale=100"]),
        "no generator is called 'felzenzwalb'", "coco-panoptic, felzenszwalb, grid, sam, sam2, sam3",
    )
    one_error_line(
        runner.invoke(app, [*arguments, "--set", "scal=100"]),
        "unknown option(s) scal for generator felzenszwalb", "scale, sigma, min_size, speck_area, max_regions",
    )
    assert not (tmp_path / "masks").exists()


def test_an_ingest_that_wrote_nothing_leaves_nothing_that_blocks_the_next(tmp_path):
    source, out = tmp_path / "photos", tmp_path / "shards"
    source.mkdir()
    one_error_line(runner.invoke(app, ["ingest", str(source), "--out", str(out), "--no-progress"]), "no image could be ingested (no images found)")
    shutil.copy(sample_photo_paths()[1], source / "chelsea.png")
    result = runner.invoke(app, ["ingest", str(source), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0 and "1 images written" in result.output, result.output
    # A successful ingest whose source changes is still refused, and keeps its shards.
    before = snapshot(out)
    shutil.copy(sample_photo_paths()[2], source / "coffee.png")
    one_error_line(runner.invoke(app, ["ingest", str(source), "--out", str(out), "--no-progress"]), "1 new (coffee.png)")
    assert snapshot(out) == before


def test_an_unreadable_image_replaced_in_place_is_read_again(tmp_path):
    source, out = tmp_path / "photos", tmp_path / "shards"
    source.mkdir()
    (source / "chelsea.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one_error_line(runner.invoke(app, ["ingest", str(source), "--out", str(out), "--no-progress"]), "no image could be ingested (1 corrupt)")
    shutil.copy(sample_photo_paths()[1], source / "chelsea.png")
    result = runner.invoke(app, ["ingest", str(source), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0 and "1 images written, 0 skipped" in result.output, result.output


def test_a_source_path_that_does_not_exist_says_so(tmp_path):
    one_error_line(
        runner.invoke(app, ["ingest", str(tmp_path / "photoes"), "--out", str(tmp_path / "shards")]),
        f"{tmp_path / 'photoes'}: no such file or folder",
    )
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("command", ["masks", "train"])
def test_a_raw_image_folder_given_for_shards_points_to_ingest(command, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_photo_paths()[1], photos / "chelsea.png")
    before = snapshot(photos)
    arguments = [command, str(photos)] if command == "masks" else [command, "--images", str(photos), "--preset", "tiny"]
    one_error_line(runner.invoke(app, [*arguments, "--out", str(tmp_path / "out")]), f"run `segpic ingest {photos} --out SHARDS` first")
    assert snapshot(photos) == before and not list((tmp_path / "out").glob("*"))


class HubWithoutDatasets(http.server.BaseHTTPRequestHandler):
    """The Hub's answer to a dataset name it does not know (or that is private)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(401)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": "Repository not found"}).encode())

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_without_datasets():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubWithoutDatasets)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    ("where", "fragments"),
    [
        ("unreachable", ["could not reach the Hugging Face Hub", "ingest a local image folder or Parquet files", "HF_HUB_OFFLINE=1"]),
        ("missing", ["the Hugging Face Hub has no dataset 'nobody/no-such-set'", "hf auth login"]),
        ("offline", ["HF_HUB_OFFLINE is set and the local cache has no copy"]),
    ],
)
def test_a_dataset_the_hub_cannot_give_is_one_line_within_seconds(where, fragments, hub_without_datasets, tmp_path):
    environment = {"HF_HOME": str(tmp_path / "hf")}
    if where == "offline":
        environment["HF_HUB_OFFLINE"] = "1"
    else:
        environment["HF_ENDPOINT"] = hub_without_datasets if where == "missing" else f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = run_segpic("ingest", "hf:nobody/no-such-set", "--out", str(tmp_path / "shards"), "--no-progress", **environment)
    assert time.monotonic() - started < 30 and result.returncode == 1
    assert result.stdout == "" and len(lines_of(result.stderr)) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: hf:nobody/no-such-set: ") and all(fragment in line for fragment in fragments), line
    assert not (tmp_path / "shards").exists()


def test_sam3_downloads_nothing_and_says_how_to_fetch_the_gated_file(sample_image_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: pytest.fail("SAM 3 must not be downloaded"))
    arguments = ["masks", str(sample_image_shards), "--generator", "sam3", "--set", "sha256=" + "0" * 64,
                 "--out", str(tmp_path / "masks"), "--no-progress"]
    one_error_line(
        runner.invoke(app, arguments),
        f"expected {tmp_path / 'cache' / 'sam3' / 'sam3.pt'} (or pass checkpoint=PATH)", "gated", "hf download facebook/sam3 sam3.pt",
    )
    cached = tmp_path / "cache" / "sam3" / "sam3.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"another file")
    one_error_line(runner.invoke(app, arguments), f"{cached}: sha256 does not match")
    assert cached.read_bytes() == b"another file" and not (tmp_path / "masks").exists()
