"""Environment for test subprocesses: this checkout importable first, plus extra variables."""

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def child_environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, **extra, "PYTHONPATH": path}
