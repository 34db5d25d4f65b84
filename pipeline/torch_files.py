"""Reading a torch file safely, and saying in one line why one cannot be read.

Every checkpoint of the project (codec checkpoints, SAM-family weights) is read here with
`torch.load(weights_only=True)`: nothing but tensors and plain containers is unpickled.
torch's own errors for a file that is not a checkpoint are a `KeyError: 101`, a page about
`weights_only`, or a zip reader's complaint; users need to know which of three things they
hold instead: something else (a web page a failed download saved, a text file), a
checkpoint cut short, or one that pickles code.
"""

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTOCOL_2 = b"\x80\x02"  # the legacy format starts with a pickled magic number
_PICKLED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
SHOWN_START = 40


def read_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """The object in a torch file, unpickling tensors and plain containers only.

    `mmap`: map a zip-format file's tensors instead of reading them (a 2.5 GB SAM checkpoint
    whose shapes are all that is needed costs nothing).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    problem = _format_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it better
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as error:  # torch raises several unrelated types for unreadable files
        raise ValueError(f"{path}: {_unreadable_reason(error)}") from error


def _format_problem(path: Path) -> str | None:
    """Why the file's bytes cannot be a torch checkpoint, read from its start and zip directory; None if they can."""
    with open(path, "rb") as file:
        start = file.read(SHOWN_START)
    if start.startswith(ZIP_MAGIC):
        if zipfile.is_zipfile(path):
            return None
        return "truncated: a torch checkpoint cut short (its zip directory is missing); download or copy it again"
    if start.startswith(PICKLE_PROTOCOL_2):
        return None
    if not start:
        return "not a torch checkpoint: the file is empty"
    text = start.decode("utf-8", errors="replace")
    shown = f" (it starts {text.strip()[:SHOWN_START]!r})" if text.isprintable() or text.strip().isprintable() else ""
    return f"not a torch checkpoint{shown}: neither a torch zip archive nor a pickle"


def _unreadable_reason(error: Exception) -> str:
    """Why torch could not read a weights file, in one line and without torch's advice to unpickle anyway."""
    text = str(error)
    pickled = _PICKLED_GLOBAL.search(text)
    if pickled:
        return (
            f"not a readable torch weights file: it holds a pickled Python object ({pickled.group(1)}), and only "
            "tensors and plain containers are loaded from checkpoints, never code: save the weights alone (a state_dict)"
        )
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text:
        return "not a readable torch weights file (its pickled data is not tensors and plain containers)"
    if isinstance(error, (KeyError, EOFError)) or not text.strip():  # garbage bytes read as pickle opcodes
        return "not a readable torch weights file (truncated or damaged)"
    return f"not a readable torch weights file ({error.__class__.__name__}: {text.strip().splitlines()[0]})"
