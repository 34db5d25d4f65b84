"""`segpic compare`: BD-rate tables and RD plots from results files and published curves."""

import csv
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from model.compare import CompareConfig, load_curve, reference_curves, run_comparison
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
    outputs = run_comparison(CompareConfig(("ref:segpic",), "ref:wacnn", tmp_path, method))
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
    result = CliRunner().invoke(app, ["compare", "ref:segpic", "--anchor", "ref:wacnn", "--out", str(tmp_path)])
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
