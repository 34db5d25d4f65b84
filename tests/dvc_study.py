"""Helpers of the DVC study tests: the project's λ values, running a command in a study repository, editing its params."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
_PROJECT_LAMBDAS = sorted(yaml.safe_load((PROJECT / "params.yaml").read_text())["train"]["lambdas"])  # with warm starts
# The study tests train at three of them (the lowest, a middle one, the highest): a curve and a BD fit for a third
# less training than all four.
LAMBDAS = sorted({_PROJECT_LAMBDAS[0], _PROJECT_LAMBDAS[len(_PROJECT_LAMBDAS) // 2], _PROJECT_LAMBDAS[-1]})


def run(args: list[str], cwd: Path, with_stderr: bool = True) -> str:
    """Run a command with this interpreter's environment first on PATH and `cwd`'s code; fail with its output."""
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(cwd),
        PYTHONDONTWRITEBYTECODE="1",
    )
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr if with_stderr else result.stdout


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def edit_params(study: Path, edit) -> None:
    path = study / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
