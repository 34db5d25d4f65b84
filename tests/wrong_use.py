"""What every wrong use of `segpic` must look like: exit code 1, one line naming the problem, nothing written changed."""

import os
import socket
import subprocess
import sys
from pathlib import Path

SEGPIC = str(Path(sys.executable).parent / "segpic")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` with its bytes and modification time."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def one_error_line(result, *fragments: str) -> str:
    """The single `error:` line of a refused command (a CliRunner result), holding every fragment."""
    assert result.exit_code == 1, result.output
    lines = lines_of(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_segpic(*arguments: str, timeout: float = 120, one_core: bool = False, **environment: str) -> subprocess.CompletedProcess:
    """`segpic ARGUMENTS` in a process of its own (environment variables read at import need one);
    `one_core`: allowed to run on a single CPU core, as a busy machine or a job slot gives."""
    core = min(os.sched_getaffinity(0))
    return subprocess.run(
        [SEGPIC, *arguments], capture_output=True, text=True, timeout=timeout, env={**os.environ, **environment},
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if one_core else None,
    )


def closed_port() -> int:
    """A local TCP port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
