"""`benchmarks/gpu.sh`, the one command a lent GPU machine runs, checked on the CPU before any is lent:
its smoke run goes through every section and prints every table, a section past its time limit is
stopped without stopping the others, and the GPU run refuses a machine without one."""

import re
import subprocess
import sys

import pytest

from child_process import CHECKOUT, child_environment

sys.path.insert(0, str(CHECKOUT / "benchmarks"))
import gpu_tables  # noqa: E402
import training_step  # noqa: E402

TITLES = {name: title for name, (title, _) in gpu_tables.SECTIONS.items()}


def run_script(*arguments: str, out, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CHECKOUT / "benchmarks" / "gpu.sh"), *arguments],
        env=child_environment(OUT=str(out), PYTHON=sys.executable, **environment),
        capture_output=True, text=True, timeout=600,
    )


def printed_tables(stdout: str) -> dict[str, tuple[str, list[str]]]:
    """Section title -> (the rest of its heading line, its table rows without the header)."""
    tables = {}
    for block in stdout.split("### ")[1:]:
        heading, *lines = block.splitlines()
        title, rest = heading.split(" (", 1)
        tables[title] = rest, [line for line in lines if line.startswith("| ") and not line.startswith("| device |")]
    return tables


def device_of(out) -> str:
    return re.search(r"^device: (.+)$", (out / "setup.log").read_text(), re.MULTILINE)[1]


@pytest.mark.slow
def test_smoke_run_prints_every_table_with_every_figure_measured_and_each_row_naming_the_device(tmp_path):
    result = run_script("--smoke", out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    tables, device = printed_tables(result.stdout), device_of(tmp_path)
    assert list(tables) == list(TITLES.values())
    for title, (heading, rows) in tables.items():
        assert heading.startswith("ran in ") and "smoke run" in heading, title
        assert rows and all(row.startswith(f"| {device} | ") for row in rows), title
    unmeasured = [row.split(" | ")[1] for _, rows in tables.values() for row in rows if "not measured" in row]
    assert unmeasured == ["ours compiled (bf16) vs the published-cost reference"]  # the smoke run does not compile
    generators = [row.split(" | ")[1] for row in tables[TITLES["generators"]][1]]
    assert generators == ["sam toy sam exact", "sam2.1 tiny", "sam3 points", "sam3 concepts"]
    assert (tmp_path / "tables.md").read_text() in result.stdout
    logs = sorted(path.name for path in tmp_path.iterdir())
    assert logs == ["codec.log", "generators.log", "masks.log", "setup.log", "tables.md", "training.log"]


def test_a_section_past_its_time_limit_is_stopped_and_the_next_one_still_runs(tmp_path):
    result = run_script("--smoke", "--box", "1", "masks", "codec", out=tmp_path)
    assert result.returncode == 1
    tables = printed_tables(result.stdout)
    assert list(tables) == [TITLES["masks"], TITLES["codec"]]
    for heading, rows in tables.values():
        assert heading.startswith("stopped at its 1 s limit")
        assert rows and all("not measured" in row for row in rows)
    for name in ("masks", "codec"):
        assert re.search(r"^gpu\.sh: exit 124 after \d+ s \(limit 1 s\)$", (tmp_path / f"{name}.log").read_text(), re.MULTILINE)


def test_the_gpu_run_refuses_a_machine_where_torch_sees_no_cuda_device(tmp_path):
    result = run_script(out=tmp_path, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 1
    assert "error: torch sees no CUDA device here; on a CPU run benchmarks/gpu.sh --smoke" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["setup.log"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["gpus"], "error: unknown argument 'gpus' (sections: masks generators training codec)"),
        (["--box", "0"], "error: --box needs whole seconds, got '0'"),
        (["--carried", "no-such-folder"], "error: no-such-folder/wheels does not exist: run 'make gpu-carry' first"),
    ],
)
def test_bad_arguments_stop_the_script_with_one_line(arguments, message, tmp_path):
    result = run_script(*arguments, out=tmp_path)
    assert (result.returncode, result.stderr) == (1, message + "\n")
    assert list(tmp_path.iterdir()) == []


def test_training_table_sets_the_rows_printed_before_the_limit_beside_their_targets(tmp_path, capsys):
    reference, fp32, bf16 = (
        training_step.Measurement(mode, 8, seconds, int(mib * 2**20), 1.0)
        for mode, seconds, mib in zip(training_step.MODES, (0.5, 0.2, 0.125), (1000.0, 800.0, 300.0))
    )
    print("training step, N=192 M=320, 256x256, SLIC masks, on cuda (target >=1.3x on CPU)")
    training_step.print_header()
    for measurement in (reference, fp32, bf16):
        training_step.print_row(measurement, reference)
    (tmp_path / "training.log").write_text(capsys.readouterr().out + "gpu.sh: exit 124 after 151 s (limit 150 s)\n")

    heading, *lines = gpu_tables.render("training", tmp_path, "NVIDIA H100 80GB HBM3", smoke=False).splitlines()
    assert heading == "### Training step (stopped at its 150 s limit: rows printed before are kept)"
    rows = [line.split(" | ") for line in lines if line.startswith("| NVIDIA")]
    assert [row[1:] for row in rows] == [
        ["ours fp32 vs the published-cost reference", "2.50x (0.2000 vs 0.5000 s/step, batch 8)", ">= 2x", "yes |"],
        ["ours bf16 autocast vs ours fp32", "1.60x (0.1250 vs 0.2000 s/step, batch 8)", ">= 1.3x", "yes |"],
        ["peak memory, ours fp32 / reference", "0.80x (800.0 vs 1000.0 MiB)", "<= 0.7x", "no |"],
        ["peak memory, ours bf16 / reference", "0.30x (300.0 vs 1000.0 MiB)", "<= 0.7x", "yes |"],
        ["ours compiled (bf16) vs the published-cost reference", "not measured", "if it compiles in time", " |"],
    ]
