"""Start-up time and peak memory of every `segpic` command, as a user meets them.

Each command runs in a fresh process on an input that does not exist, so it loads what
it needs (`segpic` imports a command's libraries only when the command runs), reports
the missing input in one line and exits: the wall time is the start-up cost that every
real run of that command pays before doing any work. Best of `--repeats` runs, which
the least disturbed by other processes; the peak resident memory is that of the same run.
Targets: `--help` and the data-stage commands within 1.5 s; the model commands pay for
the model (torch, CompressAI) only.
Run: `.venv/bin/python benchmarks/bench_startup.py [--repeats 3]`.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_TARGET_SECONDS = 1.5
MISSING = "missing-input"
COMMANDS: dict[str, tuple[list[str], bool]] = {
    # name: (arguments after `segpic`, held to the data-stage target)
    "--help": (["--help"], True),
    "ingest": (["ingest", MISSING, "--out", "out"], True),
    "masks": (["masks", MISSING, "--out", "out"], True),
    "verify": (["verify", MISSING], True),
    "repaint": (["repaint", MISSING, "--out", "out"], True),
    "export-masks": (["export-masks", MISSING, "--out", "coco.json"], True),
    "mask-stats": (["mask-stats", MISSING, "--out", "stats.json"], True),
    "train": (["train", "--images", MISSING, "--out", "run"], False),
    "eval": (["eval", f"{MISSING}.pt", "--images", MISSING, "--out", "eval.json"], False),
    "compare": (["compare", f"{MISSING}.json", "--anchor", "a", "--out", "compare"], False),
    "compress": (["compress", f"{MISSING}.png", "-c", f"{MISSING}.pt", "-o", "x.segpic"], False),
    "decompress": (["decompress", f"{MISSING}.segpic", "-c", f"{MISSING}.pt", "-o", "x.png"], False),
}


def segpic_command() -> list[str]:
    """The `segpic` beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("segpic")
    found = str(beside) if beside.is_file() else shutil.which("segpic")
    if found is None:
        raise SystemExit("segpic is not installed in this environment (run `make setup`)")
    return [found]


def timed_run(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak resident MiB, last stderr line) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = stderr.strip().splitlines()
    return seconds, usage.ru_maxrss / 1024, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    segpic = segpic_command()
    print(f"{'command':<12} {'start-up s':>10} {'peak MiB':>9}  target   answer")
    with tempfile.TemporaryDirectory() as scratch:
        for name, (args, data_stage) in COMMANDS.items():
            runs = [timed_run(segpic + args, Path(scratch)) for _ in range(arguments.repeats)]
            seconds, memory, answer = min(runs)
            target = f"<={DATA_TARGET_SECONDS} s" if data_stage else "-"
            met = "" if not data_stage else (" ok" if seconds <= DATA_TARGET_SECONDS else " MISSED")
            print(f"{name:<12} {seconds:>10.2f} {memory:>9.0f}  {target:<7}{met:<7} {answer[:60]}")


if __name__ == "__main__":
    main()
