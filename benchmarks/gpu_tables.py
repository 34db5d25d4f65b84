"""One table per GPU target from the logs `benchmarks/gpu.sh` writes, each row naming the device.

The benchmarks print their own reports (`bench_masks.py`, `bench_model.py`); this reads out of
them the figures that the targets name and sets each beside its target, so that one run's
output goes into the README's "GPU figures" as it is. A section stopped at its time limit
keeps the rows it printed before; a figure it never reached reads "not measured".

    python benchmarks/gpu_tables.py --describe [--require-cuda]   # device and versions, for setup.log
    python benchmarks/gpu_tables.py LOGS [--smoke] [SECTION ...]  # the tables, from LOGS/SECTION.log
"""

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NUMBER = r"(\d+(?:\.\d+)?)"
STATUS = re.compile(r"^gpu\.sh: exit (\d+) after (\d+) s \(limit (\d+) s\)$", re.MULTILINE)
TIMED_OUT = {124, 137}  # timeout's own code, and SIGKILL after --kill-after


@dataclass(frozen=True)
class Table:
    """Columns after the device column, the rows under them, and the benchmark's own lines saying what ran."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: list[str]


def find(pattern: str, text: str) -> re.Match | None:
    return re.search(pattern, text, re.MULTILINE)


def verdict(value: float, bound: float, at_least: bool) -> str:
    return "yes" if (value >= bound if at_least else value <= bound) else "no"


def target_row(name: str, target: str, measured: Callable[[], tuple[str, str]], *matches: re.Match | None) -> tuple[str, ...]:
    """(figure, measured, target, met); `measured` gives (measured, met) and runs only when every match was found."""
    if not all(matches):
        return name, "not measured", target, ""
    value, met = measured()
    return name, value, target, met


def caption(text: str, *patterns: str) -> list[str]:
    return [match.group(0) for match in (find(pattern, text) for pattern in patterns) if match]


FIGURE_COLUMNS = ("figure", "measured", "target", "met")


def masks_table(text: str) -> Table:
    """bench_masks.py: stock AMG vs exact and fast mode, their agreement, the masks stage."""
    stock, exact, fast = (find(rf"^{name}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+\S+\s+\S+\s+(.+)$", text)
                          for name in ("stock AMG", "exact mode", "fast mode"))
    equal = find(r"exact mode masks equal stock's mask for mask: (True|False)", text)
    ious = find(rf"per-prompt mask IoU median {NUMBER}, 5th percentile {NUMBER}", text)
    stage = find(rf"^masks stage .*: {NUMBER} images/s = (\d+)% of the generator's own {NUMBER} images/s", text)
    figures = [
        target_row("exact mode vs stock SamAutomaticMaskGenerator", ">= 2.5x", lambda: (
            f"{float(exact[5]):.2f}x ({exact[1]} vs {stock[1]} s/image)", verdict(float(exact[5]), 2.5, True)), stock, exact),
        target_row("exact mode's masks equal stock's, mask for mask", "equal", lambda: (
            equal[1], "yes" if equal[1] == "True" else "no"), equal),
        target_row("fast mode", ">= 10 images/s", lambda: (
            f"{1 / float(fast[1]):.1f} images/s ({float(fast[5]):.2f}x stock)", verdict(1 / float(fast[1]), 10, True)), fast),
        target_row("fast vs exact per-prompt mask IoU, median (5th percentile)", ">= 0.95", lambda: (
            f"{ious[1]} ({ious[2]})", verdict(float(ious[1]), 0.95, True)), ious),
        target_row("masks stage (decode, generate, encode, write) vs the generator alone", ">= 90 %", lambda: (
            f"{stage[2]} % ({stage[1]} vs {stage[3]} images/s)", verdict(float(stage[2]), 90, True)), stage),
        target_row("peak memory: stock / exact / fast", "-", lambda: (
            " / ".join(row[6] for row in (stock, exact, fast)), "-"), stock, exact, fast),
    ]
    return Table(FIGURE_COLUMNS, figures, caption(text, r"^.+ points, \d+ images .+$", r"^realistic regime: .+$"))


def generators_table(text: str) -> Table:
    """bench_masks.py --sam3: one row per generator, as printed."""
    pattern = rf"^(\S.*?)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}   (.+)$"
    header = find(r"^generator\s+s/image.*$", text)
    lines = text[header.end():].splitlines() if header else []
    rows = [(m[1], m[2], m[4], m[3], m[5]) for m in (re.match(pattern, line) for line in lines) if m]
    rows = rows or [("not measured", "", "", "", "")]
    return Table(("generator", "s/image", "masks/image", "regions/image", "peak memory"), rows,
                 caption(text, r"^\d+ images .+ by predicted IoU.*$"))


def training_table(text: str) -> Table:
    """bench_model.py --only-training: ours against the published-cost reference (ratios of its rows)."""
    def mode(name: str) -> re.Match | None:
        return find(rf"^{re.escape(name)}\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+", text)

    reference, fp32, bf16, compiled = (mode(name) for name in (
        "published-cost reference, fp32", "ours fp32", "ours bf16 autocast", "ours compiled, bf16"))

    def speed(fast: re.Match, slow: re.Match, bound: float) -> tuple[str, str]:
        ratio = float(slow[2]) / float(fast[2])
        return f"{ratio:.2f}x ({fast[2]} vs {slow[2]} s/step, batch {fast[1]})", verdict(ratio, bound, True)

    def memory(ours: re.Match) -> tuple[str, str]:
        ratio = float(ours[3]) / float(reference[3])
        return f"{ratio:.2f}x ({ours[3]} vs {reference[3]} MiB)", verdict(ratio, 0.7, False)

    figures = [
        target_row("ours fp32 vs the published-cost reference", ">= 2x", lambda: speed(fp32, reference, 2), fp32, reference),
        target_row("ours bf16 autocast vs ours fp32", ">= 1.3x", lambda: speed(bf16, fp32, 1.3), bf16, fp32),
        target_row("peak memory, ours fp32 / reference", "<= 0.7x", lambda: memory(fp32), fp32, reference),
        target_row("peak memory, ours bf16 / reference", "<= 0.7x", lambda: memory(bf16), bf16, reference),
        target_row("ours compiled (bf16) vs the published-cost reference", "if it compiles in time", lambda: (
            speed(compiled, reference, 0)[0], "-"), compiled, reference),
    ]
    return Table(FIGURE_COLUMNS, figures, caption(text, r"^training step, .+$"))


def codec_table(text: str) -> Table:
    """bench_model.py --only-codec: published-compatible vs the published-cost reference, portable, round trips."""
    coding = find(rf"^encode\+decode (.+?)\s+plain\s+{NUMBER} s\s+fast\s+{NUMBER} s\s+ratio\s+{NUMBER}x", text)
    portable = find(rf"^encode\+decode, portable mode\s+{NUMBER} s\s+=\s+{NUMBER}x", text)
    trips = {kind: find(rf"^{kind} round trip (\S+) -> (\S+): symbols identical (True|False), PSNR {NUMBER} / {NUMBER} dB", text)
             for kind in ("portable", "published-compatible")}

    def trip(match: re.Match, judged: bool) -> tuple[str, str]:
        same = match[3] == "True"
        return f"{match[3]} (PSNR {match[4]} / {match[5]} dB)", ("yes" if same else "no") if judged else "-"

    figures = [
        target_row("published-compatible encode+decode vs the published-cost reference", ">= 2x", lambda: (
            f"{coding[4]}x ({coding[3]} vs {coding[2]} s, {coding[1]})", verdict(float(coding[4]), 2, True)), coding),
        target_row("portable / published-compatible encode+decode time", "<= 1.25x", lambda: (
            f"{portable[2]}x ({portable[1]} s)", verdict(float(portable[2]), 1.25, False)), portable),
        target_row("portable file decodes symbol-exactly where encoded and on the CPU", "identical", lambda: trip(trips["portable"], True),
                   trips["portable"]),
        target_row("published-compatible file, the same round trip", "-", lambda: trip(trips["published-compatible"], False),
                   trips["published-compatible"]),
    ]
    return Table(FIGURE_COLUMNS, figures, caption(text, r"^codec on .+$"))


SECTIONS = {
    "masks": ("Masks: SAM stock AMG vs our engine", masks_table),
    "generators": ("Masks: SAM 2.1 and SAM 3 beside SAM", generators_table),
    "training": ("Training step", training_table),
    "codec": ("Codec", codec_table),
}


def section_status(log: Path) -> str:
    if not log.is_file():
        return "not run"
    status = STATUS.search(log.read_text(errors="replace"))
    if status is None:
        return "did not finish (no status line)"
    code, seconds, limit = (int(value) for value in status.groups())
    if code == 0:
        return f"ran in {seconds} s"
    if code in TIMED_OUT:
        return f"stopped at its {limit} s limit: rows printed before are kept"
    return f"failed with exit {code} after {seconds} s: see {log.name}"


def render(name: str, logs: Path, device: str, smoke: bool) -> str:
    title, table_of = SECTIONS[name]
    log = logs / f"{name}.log"
    table = table_of(log.read_text(errors="replace") if log.is_file() else "")
    lines = [f"### {title} ({section_status(log)}){' — smoke run: toy sizes on the CPU, figures mean nothing' if smoke else ''}", ""]
    lines += [f"{line}  " for line in table.caption] + ([""] if table.caption else [])
    lines += ["| " + " | ".join(("device", *table.columns)) + " |", "|" + "---|" * (len(table.columns) + 1)]
    lines += ["| " + " | ".join((device, *row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def describe(require_cuda: bool) -> int:
    """The device line the tables read back (GPU name, else the CPU's), and the versions that matter."""
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    if require_cuda and not cuda:
        print("error: torch sees no CUDA device here; on a CPU run benchmarks/gpu.sh --smoke")
        return 1
    if cuda:
        name = torch.cuda.get_device_name(0)
    else:
        cpu = find(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text())
        name = f"{cpu[1] if cpu else 'unknown'} (CPU)"
    print(f"device: {name}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, nargs="?", help="the folder gpu.sh wrote (setup.log and one log per section)")
    parser.add_argument("sections", nargs="*", help=f"which tables (default all: {' '.join(SECTIONS)})")
    parser.add_argument("--smoke", action="store_true", help="say in every title that the figures are a smoke run's")
    parser.add_argument("--describe", action="store_true", help="print the device and versions instead")
    parser.add_argument("--require-cuda", action="store_true", help="with --describe: fail without a CUDA device")
    args = parser.parse_intermixed_args()
    if args.describe:
        return describe(args.require_cuda)
    if args.logs is None:
        parser.error("give the folder gpu.sh wrote its logs to")
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    setup = (args.logs / "setup.log").read_text()
    device = find(r"^device: (.+)$", setup)
    print(f"{setup.splitlines()[0]}\n")  # gpu.sh's first line: the date and the kind of run
    for name in args.sections or SECTIONS:
        print(render(name, args.logs, device[1] if device else "unknown device", args.smoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
