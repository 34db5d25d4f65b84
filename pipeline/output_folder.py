"""The folder a stage writes into: created if needed, never a file, and locked against a second run.

Two runs writing one folder at once would interleave parts and manifests, so every run
holds an advisory `flock` on `OUT/.segpic.lock` while it works: a whole-set run holds
it exclusively; job-array jobs share it with each other (they write disjoint shards by
design) and each holds its own `OUT/.segpic.lock-job-I-of-N` exclusively, so the same
job cannot run twice. The kernel drops the locks when a process dies, even by SIGKILL.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

LOCK_NAME = ".segpic.lock"


class FolderInUse(ValueError):
    """Another run holds the output folder's lock."""


def ensure_output_folder(out: Path) -> Path:
    """Create `out` (and parents) unless it exists as a folder; raise ValueError when it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create the folder ({error.strerror})") from error
    return out


def _lock(path: Path, mode: int, out: Path, stack: ExitStack) -> None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    stack.callback(os.close, descriptor)
    try:
        fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
    except BlockingIOError as error:
        raise FolderInUse(f"{out} is being written by another segpic run (lock {path.name}); wait for it to finish") from error


@contextmanager
def locked_output(out: Path, job: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold `out`'s lock for the block; `job` = (index, count) for a job-array job."""
    with ExitStack() as stack:
        if job is None:
            _lock(out / LOCK_NAME, fcntl.LOCK_EX, out, stack)
        else:
            _lock(out / LOCK_NAME, fcntl.LOCK_SH, out, stack)
            _lock(out / f"{LOCK_NAME}-job-{job[0]}-of-{job[1]}", fcntl.LOCK_EX, out, stack)
        yield
