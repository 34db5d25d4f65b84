"""Files that appear whole or not at all: every writer of the project goes through here.

The content is written under a unique hidden name beside the target (`.NAME.XXXX.incomplete`),
then renamed over it, so a reader, a crash or a second writer never sees half a file. The
file gets the permissions any new file of the user gets (0666 less the umask), not the
owner-only 0600 of `mkstemp`, so results can be shared.
"""

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INCOMPLETE_SUFFIX = ".incomplete"


def refuse_to_replace(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise naming the first of `paths` that is a folder or (unless `overwrite`) an existing file.

    The one rule of every command that writes files the user names: a file is replaced only
    when asked (`--overwrite`), checked before any work, so a slip of `-o` costs nothing.
    """
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give the file to write")
        if path.exists() and not overwrite:
            raise ValueError(f"{path} already exists: pass --overwrite to replace it, or choose another file")


def new_file_mode() -> int:
    """0666 less the process's umask: what `open()` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; it replaces `path` when the block ends
    normally and is deleted when the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=INCOMPLETE_SUFFIX)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, new_file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: Path, data: bytes) -> None:
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomically(path: Path, data: Any) -> None:
    """Indented JSON with a final newline."""
    write_bytes_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
