"""Our checkpoint format, defined once: every trainer, evaluator and codec command uses it.

A checkpoint is a torch file holding a dict:
    format="segpic-checkpoint", format_version, arch, model_args (dict), state_dict,
    plus any training keys (optimisers, epoch, ...) that loaders ignore.
Like nanoGPT, `arch` + `model_args` rebuild the model, so a checkpoint is self-describing.
`load_codec` also accepts the published SegPIC files (see `model.official`).
"""

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel

from model import official
from model.architectures import build_model
from pipeline.atomic_files import atomic_output
from pipeline.torch_files import read_torch_file

CHECKPOINT_FORMAT = "segpic-checkpoint"
FORMAT_VERSION = 1
_RESERVED_KEYS = ("format", "format_version", "arch", "model_args", "state_dict")


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """torch.save through `atomic_output`: no half-written checkpoints, the user's file permissions."""
    with atomic_output(Path(path)) as partial, open(partial, "wb") as stream:
        torch.save(obj, stream)


def save_codec(
    path: str | Path,
    model: CompressionModel,
    arch: str,
    model_args: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write `model` in our format; `extra` adds training state (it may not reuse format keys)."""
    clashes = sorted(set(extra or {}) & set(_RESERVED_KEYS))
    if clashes:
        raise ValueError(f"extra checkpoint entries may not replace {', '.join(clashes)}")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "model_args": dict(model_args),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    atomic_torch_save(checkpoint, path)


def save_official_checkpoint(path: str | Path, model: CompressionModel) -> None:
    """Write `model` as the published files are laid out: {"state_dict": published layout}."""
    atomic_torch_save({"state_dict": official.export_official_state_dict(model)}, path)


def is_our_checkpoint(checkpoint: object) -> bool:
    return isinstance(checkpoint, Mapping) and checkpoint.get("format") == CHECKPOINT_FORMAT


def check_format_version(checkpoint: Mapping[str, Any], source: str) -> None:
    """Refuse a checkpoint of our format written by a newer (or broken) version."""
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{source}: checkpoint format version {version!r} is not supported (up to {FORMAT_VERSION})")


def _model_from_ours(checkpoint: Mapping[str, Any], source: str) -> CompressionModel:
    check_format_version(checkpoint, source)
    missing = [key for key in _RESERVED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{source}: checkpoint lacks {', '.join(missing)}")
    try:
        model = build_model(checkpoint["arch"], **checkpoint["model_args"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{source}: cannot rebuild {checkpoint['arch']}({checkpoint['model_args']}): {error}"
        ) from error
    return model


def codec_from_checkpoint(checkpoint: object, source: str, device: str | torch.device = "cpu") -> CompressionModel:
    """The codec in a loaded checkpoint (ours or the published layout), in eval mode with coder tables built."""
    if is_our_checkpoint(checkpoint):
        model = _model_from_ours(checkpoint, source)
    else:
        model = official.model_from_official_state(checkpoint, source)
    model.eval()
    model.update()
    return model.to(device)


def load_codec(path: str | Path, device: str | torch.device = "cpu") -> CompressionModel:
    """The codec in the checkpoint file at `path` (see `codec_from_checkpoint`)."""
    return codec_from_checkpoint(read_torch_file(path), str(path), device)


def trained_lambda(checkpoint: object) -> float | None:
    """The λ a checkpoint of ours was last trained at; None for the published files, which do not record it."""
    if not is_our_checkpoint(checkpoint):
        return None
    experiment = (checkpoint.get("training") or {}).get("experiment") or {}
    value = experiment.get("lmbda")
    return None if value is None else float(value)


def weights_hash(model: CompressionModel) -> str:
    """SHA-256 over every state-dict entry (name, dtype, shape, bytes) except the CDF tables.

    The tables are left out because `update()` rebuilds them from the weights, so a model
    hashes the same before and after `update()` and whichever layout it was loaded from.
    """
    tables = official.coder_table_keys(model)
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key in tables:
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
