"""`segpic compare`: BD-rate tables and RD plots from results files and published curves."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from model.bd_bootstrap import BootstrapSettings
from model.compare import CompareConfig, ComparisonSettings, run_comparison
from model.rd_curves import load_curve, reference_curves
from pipeline.cli import app


def write_results(path, name, bpp, psnr, ms_ssim=None, layout="segpic"):
    """A results file as `segpic eval` writes it, or in CompressAI eval_model's bare layout."""
    results = {"bpp": bpp, "psnr-rgb": psnr, "encoding_time": [0.1] * len(bpp), "decoding_time": [0.1] * len(bpp)}
    if ms_ssim is not None:
        results["ms-ssim-rgb"] = ms_ssim
    document = {"name": name, "description": "Inference (ans)", "results": results}
    if layout == "segpic":
        document.update(format="segpic-eval", format_version=1, checkpoints=[], per_image=[])
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(("method", "expected"), [("cubic", -5.38), ("pchip", -5.45)])
def test_published_segpic_saves_about_5_4_percent_over_wacnn_on_kodak(tmp_path, method, expected):
    outputs = run_comparison(CompareConfig(("ref:segpic",), "ref:wacnn", tmp_path, ComparisonSettings(method)))
    rows = {row.curve: row for row in outputs.rows}
    assert rows["ref:segpic"].results["psnr"].bd_rate_percent == pytest.approx(expected, abs=0.01)
    assert rows["ref:segpic"].results["psnr"].bd_quality_db > 0
    assert rows["ref:wacnn"].results["psnr"].bd_rate_percent == pytest.approx(0.0, abs=1e-9)


def test_references_are_the_published_kodak_points():
    segpic = load_curve("ref:segpic")
    assert segpic.bpp == (0.120, 0.194, 0.288, 0.439, 0.633, 0.861)
    assert segpic.quality["psnr"] == (29.24, 30.76, 32.25, 34.23, 36.01, 37.81)
    assert "ms-ssim" not in segpic.quality
    assert {"segpic", "wacnn"} <= set(reference_curves())


def test_compare_writes_table_plot_and_points(tmp_path):
    anchor = write_results(
        tmp_path / "grid.json", "grid", [0.2, 0.4, 0.7, 1.1], [28.0, 30.5, 33.0, 35.5], [0.93, 0.96, 0.975, 0.985]
    )
    better = write_results(
        tmp_path / "sam.json", "sam", [0.18, 0.36, 0.63, 0.99], [28.0, 30.5, 33.0, 35.5], [0.93, 0.96, 0.975, 0.985]
    )
    out = tmp_path / "compare"
    outputs = run_comparison(CompareConfig((str(anchor), str(better), "ref:wacnn"), "grid", out))

    table = json.loads((out / "bdrate.json").read_text())
    assert table["anchor"] == "grid"
    rows = {row["curve"]: row["results"] for row in table["rows"]}
    assert rows["sam"]["psnr"]["bd_rate_percent"] == pytest.approx(-10.0, abs=1e-6)
    assert rows["sam"]["ms-ssim"]["bd_rate_percent"] == pytest.approx(-10.0, abs=1e-6)
    assert rows["ref:wacnn"]["ms-ssim"] == {
        "bd_rate_percent": None, "bd_quality_db": None, "note": "no ms-ssim points in ref:wacnn"
    }

    markdown = (out / "bdrate.md").read_text()
    assert "| sam | 4 | -10.00 % |" in markdown
    assert "n/a" in markdown and "no ms-ssim points in ref:wacnn" in markdown

    with Image.open(outputs.plot) as plot:
        assert plot.format == "PNG" and plot.width > 400 and plot.height > 300

    with open(out / "rd_points.csv", newline="") as stream:
        points = list(csv.DictReader(stream))
    assert len(points) == 4 + 4 + 6
    assert [row["ms-ssim"] for row in points if row["curve"] == "ref:wacnn"] == [""] * 6


def test_compressai_eval_model_output_is_accepted(tmp_path):
    path = write_results(tmp_path / "x.json", "bmshj2018", [0.2, 0.4, 0.7, 1.1], [28, 30, 32, 34], layout="compressai")
    curve = load_curve(str(path))
    assert curve.name == "bmshj2018" and curve.quality["psnr"] == (28, 30, 32, 34)


def test_curves_that_do_not_overlap_are_reported_not_fatal(tmp_path):
    low = write_results(tmp_path / "low.json", "low", [0.01, 0.02, 0.03, 0.04], [20.0, 21.0, 22.0, 23.0])
    outputs = run_comparison(CompareConfig((str(low),), "ref:segpic", tmp_path / "out"))
    result = {row.curve: row for row in outputs.rows}["low"].results["psnr"]
    assert result.bd_rate_percent is None and "do not overlap" in result.note


def test_two_curves_with_one_name_are_refused(tmp_path):
    first = write_results(tmp_path / "a.json", "same", [0.2, 0.4, 0.7, 1.1], [28, 30, 32, 34])
    second = write_results(tmp_path / "b.json", "same", [0.2, 0.4, 0.7, 1.1], [28, 30, 32, 34])
    with pytest.raises(ValueError, match="same"):
        run_comparison(CompareConfig((str(first), str(second)), "same", tmp_path / "out"))


def test_cli_compare_prints_the_table(tmp_path):
    result = CliRunner().invoke(
        app, ["compare", "ref:segpic", "--anchor", "ref:wacnn", "--out", str(tmp_path), "--method", "cubic"]
    )
    assert result.exit_code == 0, result.output
    assert "-5.38 %" in result.output
    assert (tmp_path / "rd.png").is_file()


def test_cli_unknown_reference_is_one_line_and_exit_1(tmp_path):
    result = CliRunner().invoke(app, ["compare", "ref:nope", "--anchor", "ref:wacnn", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown reference curve ref:nope" in result.output
    assert "Traceback" not in result.output


def test_a_metric_missing_at_some_points_is_n_a(tmp_path):
    """Eval writes null MS-SSIM when every image is too small for it: that metric is n/a, PSNR still counts."""
    small = write_results(tmp_path / "s.json", "small", [0.2, 0.4, 0.7, 1.1], [28, 30, 32, 34], [None, 0.9, 0.95, 0.97])
    other = write_results(tmp_path / "o.json", "other", [0.2, 0.4, 0.7, 1.1], [28, 30, 32, 34], [0.8, 0.9, 0.95, 0.97])
    outputs = run_comparison(CompareConfig((str(other), str(small)), "other", tmp_path / "out"))
    result = {row.curve: row for row in outputs.rows}["small"].results
    assert result["psnr"].bd_rate_percent == pytest.approx(0.0, abs=1e-9)
    assert result["ms-ssim"].bd_rate_percent is None and "no ms-ssim points in small" in result["ms-ssim"].note


LAMBDAS = [0.0018, 0.0067, 0.025, 0.0483]


def write_eval(path, name, bpp, psnr, ms_ssim=None, lambdas=LAMBDAS, images=None):
    """A `segpic eval` results file from (points, images) per-image arrays: means, λ per checkpoint, per-image rows."""
    bpp, psnr = np.asarray(bpp, float), np.asarray(psnr, float)
    ms_ssim = np.full_like(psnr, 0.95) if ms_ssim is None else np.asarray(ms_ssim, float)
    images = images or [f"image{i:02d}" for i in range(bpp.shape[1])]
    paths = [f"runs/{name}/{lmbda}/checkpoint.pt" for lmbda in lambdas]
    rows = [
        {"checkpoint": paths[k], "image": image, "bpp": bpp[k, i], "psnr-rgb": psnr[k, i], "ms-ssim-rgb": ms_ssim[k, i]}
        for k in range(len(paths)) for i, image in enumerate(images)
    ]
    document = {
        "name": name, "description": "Inference (ans, .segpic files)", "format": "segpic-eval", "format_version": 1,
        "image_set": "synthetic", "image_count": len(images),
        "checkpoints": [{"path": path, "label": str(lmbda), "lmbda": lmbda} for path, lmbda in zip(paths, lambdas)],
        "results": {"bpp": list(bpp.mean(1)), "psnr-rgb": list(psnr.mean(1)), "ms-ssim-rgb": list(ms_ssim.mean(1)),
                    "encoding_time": [0.1] * len(paths), "decoding_time": [0.1] * len(paths)},
        "per_image": rows,
    }
    path.write_text(json.dumps(document))
    return path


def noisy_curves(seed, images=12, factor=0.9):
    """An anchor and a test whose every image needs `factor` times the anchor's bits at the same PSNR, plus noise."""
    rng = np.random.default_rng(seed)
    base_bpp = np.array([0.15, 0.3, 0.6, 1.0])[:, None] * rng.uniform(0.6, 1.6, images)[None, :]
    quality = np.array([27.0, 29.5, 32.0, 34.0])[:, None] + rng.normal(0, 2.0, images)[None, :]
    anchor_bpp = base_bpp * np.exp(rng.normal(0, 0.05, base_bpp.shape))
    test_bpp = factor * base_bpp * np.exp(rng.normal(0, 0.05, base_bpp.shape))
    return (anchor_bpp, quality + rng.normal(0, 0.1, quality.shape)), (test_bpp, quality + rng.normal(0, 0.1, quality.shape))


def study_files(tmp_path, seed=1):
    (anchor_bpp, anchor_psnr), (test_bpp, test_psnr) = noisy_curves(seed)
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval(folder / "grid.json", "grid", anchor_bpp, anchor_psnr)
    write_eval(folder / "sam.json", "sam", test_bpp, test_psnr)
    return folder


def test_bootstrap_interval_covers_the_known_answer_and_says_fewer_bits(tmp_path):
    outputs = run_comparison(CompareConfig((str(study_files(tmp_path)),), "grid", tmp_path / "out"))
    row = {row.curve: row for row in outputs.rows}["sam"]
    value, interval = row.results["psnr"].bd_rate_percent, row.uncertainty["psnr"].bd_rate
    assert value == pytest.approx(-10.0, abs=2.0)
    assert interval.low < -10.0 < interval.high and interval.high < 0
    assert row.uncertainty["psnr"].rate_verdict == "fewer bits"
    assert row.uncertainty["psnr"].bd_quality.low > 0 and row.uncertainty["psnr"].quality_verdict == "higher quality"
    table = json.loads((tmp_path / "out" / "bdrate.json").read_text())
    sam = next(r for r in table["rows"] if r["curve"] == "sam")
    assert sam["uncertainty"]["psnr"]["bd_rate_interval"] == [interval.low, interval.high]
    assert sam["uncertainty"]["psnr"]["bd_rate_verdict"] == "fewer bits"
    assert sam["lambdas"] == LAMBDAS
    markdown = (tmp_path / "out" / "bdrate.md").read_text()
    assert f"[{interval.low:+.2f}, {interval.high:+.2f}]" in markdown
    assert "- sam vs grid, PSNR: BD-rate" in markdown and ": fewer bits;" in markdown
    assert "akima Bjøntegaard fit" in markdown and "synthetic (12 images)" in markdown


def test_resamples_without_a_valid_fit_are_counted_in_the_table_and_json(tmp_path):
    # One image of twelve loses 1.2 dB between the two highest λs where the others gain 0.5: the mean curve rises
    # unless a resample draws that image 4 times or more (about 1 % of resamples), so a few are left out.
    images = 12
    bpp = np.array([0.15, 0.3, 0.6, 1.0])[:, None] * np.ones(images)[None, :]
    psnr = np.array([27.0, 29.5, 32.0, 32.5])[:, None] * np.ones(images)[None, :]
    psnr[3, 0] = 30.8
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval(folder / "grid.json", "grid", bpp, np.array([26.5, 29.0, 31.5, 33.0])[:, None] * np.ones(images)[None, :])
    write_eval(folder / "sam.json", "sam", bpp, psnr)
    outputs = run_comparison(CompareConfig((str(folder),), "grid", tmp_path / "out"))
    interval = {row.curve: row for row in outputs.rows}["sam"].uncertainty["psnr"].bd_rate
    assert interval.low is not None and 950 <= interval.valid < 1000
    note = f"{1000 - interval.valid} of 1000 resamples had no valid fit and are left out"
    assert interval.note == note
    assert f"higher quality ({note})\n" in (tmp_path / "out" / "bdrate.md").read_text()
    sam = next(r for r in json.loads((tmp_path / "out" / "bdrate.json").read_text())["rows"] if r["curve"] == "sam")
    assert sam["uncertainty"]["psnr"]["resamples_used"] == interval.valid and sam["uncertainty"]["psnr"]["note"] == note


def test_the_bootstrap_is_reproducible_for_a_seed_and_moves_with_another(tmp_path):
    folder = study_files(tmp_path)

    def interval(seed, out):
        settings = ComparisonSettings(bootstrap=BootstrapSettings(seed=seed))
        outputs = run_comparison(CompareConfig((str(folder),), "grid", tmp_path / out, settings))
        found = {row.curve: row for row in outputs.rows}["sam"].uncertainty["psnr"].bd_rate
        return found.low, found.high

    assert interval(0, "a") == interval(0, "b")
    assert interval(0, "a") != interval(1, "c")


def test_identical_curves_are_within_noise(tmp_path):
    (anchor_bpp, anchor_psnr), _ = noisy_curves(3)
    rng = np.random.default_rng(4)
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval(folder / "grid.json", "grid", anchor_bpp, anchor_psnr)
    write_eval(folder / "same.json", "same", anchor_bpp * np.exp(rng.normal(0, 0.05, anchor_bpp.shape)), anchor_psnr)
    outputs = run_comparison(CompareConfig((str(folder),), "grid", tmp_path / "out"))
    uncertainty = {row.curve: row for row in outputs.rows}["same"].uncertainty["psnr"]
    assert uncertainty.bd_rate.low < 0 < uncertainty.bd_rate.high
    assert uncertainty.rate_verdict == "within noise"


def test_a_non_monotonic_curve_is_n_a_with_the_reason_in_table_and_json(tmp_path):
    (anchor_bpp, anchor_psnr), (test_bpp, test_psnr) = noisy_curves(1)
    test_psnr[3] = test_psnr[2] - 1.0  # quality falls at the highest λ
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval(folder / "grid.json", "grid", anchor_bpp, anchor_psnr)
    write_eval(folder / "sam.json", "sam", test_bpp, test_psnr)
    run_comparison(CompareConfig((str(folder),), "grid", tmp_path / "out"))
    table = json.loads((tmp_path / "out" / "bdrate.json").read_text())
    psnr = next(r for r in table["rows"] if r["curve"] == "sam")["results"]["psnr"]
    assert psnr == {"bd_rate_percent": None, "bd_quality_db": None,
                    "note": "sam: quality falls between λ=0.025 and λ=0.0483"}
    markdown = (tmp_path / "out" / "bdrate.md").read_text()
    assert "| sam | 4 | n/a |" in markdown
    assert "- sam, psnr: n/a, sam: quality falls between λ=0.025 and λ=0.0483" in markdown
    assert "e+" not in markdown


def test_rate_falling_with_lambda_is_n_a(tmp_path):
    (anchor_bpp, anchor_psnr), (test_bpp, test_psnr) = noisy_curves(1)
    test_bpp[3] = test_bpp[2] * 0.9
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval(folder / "grid.json", "grid", anchor_bpp, anchor_psnr)
    write_eval(folder / "sam.json", "sam", test_bpp, test_psnr)
    outputs = run_comparison(CompareConfig((str(folder),), "grid", tmp_path / "out"))
    result = {row.curve: row for row in outputs.rows}["sam"].results["psnr"]
    assert result.bd_rate_percent is None and result.note == "sam: rate falls between λ=0.025 and λ=0.0483"


def test_too_few_images_give_a_value_but_no_interval(tmp_path):
    (anchor_bpp, anchor_psnr), (test_bpp, test_psnr) = noisy_curves(1, images=3)
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval(folder / "grid.json", "grid", anchor_bpp, anchor_psnr)
    write_eval(folder / "sam.json", "sam", test_bpp, test_psnr)
    outputs = run_comparison(CompareConfig((str(folder),), "grid", tmp_path / "out"))
    row = {row.curve: row for row in outputs.rows}["sam"]
    assert row.results["psnr"].bd_rate_percent is not None
    assert row.uncertainty["psnr"].bd_rate.low is None
    assert row.uncertainty["psnr"].bd_rate.note == "3 images; an interval needs at least 5"


def test_names_from_keeps_exactly_the_study_curves(tmp_path):
    folder = study_files(tmp_path)
    stale = json.loads((folder / "sam.json").read_text())
    stale["name"] = "felzenszwalb"
    (folder / "felzenszwalb.json").write_text(json.dumps(stale))
    (tmp_path / "params.yaml").write_text("masks:\n  generators: [sam]\n")
    result = CliRunner().invoke(app, [
        "compare", str(folder), "--anchor", "grid", "--out", str(tmp_path / "out"),
        "--names-from", f"{tmp_path / 'params.yaml'}:masks.generators",
    ])
    assert result.exit_code == 0, result.output
    curves = [row["curve"] for row in json.loads((tmp_path / "out" / "bdrate.json").read_text())["rows"]]
    assert curves == ["grid", "sam"]
    assert f"left out {folder / 'felzenszwalb.json'}: felzenszwalb is not in" in result.output
    assert "felzenszwalb" not in (tmp_path / "out" / "bdrate.md").read_text()


def test_names_from_refuses_a_listed_curve_without_results(tmp_path):
    folder = study_files(tmp_path)
    (tmp_path / "params.yaml").write_text("masks:\n  generators: [sam, sam2]\n")
    result = CliRunner().invoke(app, [
        "compare", str(folder), "--anchor", "grid", "--out", str(tmp_path / "out"),
        "--names-from", f"{tmp_path / 'params.yaml'}:masks.generators",
    ])
    assert result.exit_code == 1
    assert "no results for sam2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_cli_names_the_method_and_refuses_an_unknown_one(tmp_path):
    result = CliRunner().invoke(app, ["compare", "ref:segpic", "--anchor", "ref:wacnn", "--out", str(tmp_path)])
    assert result.exit_code == 0 and "akima Bjøntegaard fit" in result.output
    result = CliRunner().invoke(app, ["compare", "ref:segpic", "--anchor", "ref:wacnn", "--out", str(tmp_path / "x"),
                                      "--method", "linear"])
    assert result.exit_code == 1 and "unknown BD interpolation 'linear'" in result.output
