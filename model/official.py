"""The published SegPIC checkpoints: their state-dict layout, read into our model and written back.

The published files (layout: `model/reference/segpic_official_keys.json`) differ from
`SegPIC().state_dict()` only in naming and bookkeeping, never in values:
- keys may carry a `module.` prefix (models trained under DataParallel);
- entropy bottlenecks use CompressAI 1.1 names (`_matrix0`, `_bias0`, `_factor0`) where 1.2
  says `matrices.0`, `biases.0`, `factors.0`; the rename matches the exact module name,
  so `entropy_bottleneck` never claims `entropy_bottleneck_b.*` keys;
- the SAL blocks are registered twice, so their tensors appear under two names (aliases);
- the entropy coders' CDF tables are saved empty and rebuilt by `update()`.
Files are always read with `torch.load(weights_only=True)`: nothing but tensors is unpickled.
"""

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models import CompressionModel
from torch import Tensor

from model.architectures import build_model
from model.entropy_coding import CDF_BUFFERS
from pipeline.torch_files import read_torch_file

PUBLISHED_N = 192
PUBLISHED_M = 320
DATA_PARALLEL_PREFIX = "module."
_LEGACY_LEAF = re.compile(r"^_(matrix|bias|factor)(\d+)$")
_PLURAL = {"matrix": "matrices", "bias": "biases", "factor": "factors"}
_SINGULAR = {plural: singular for singular, plural in _PLURAL.items()}
_LISTED_KEYS = 12


def _bottleneck_names(model: CompressionModel) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, EntropyBottleneck)}


def coder_table_keys(model: CompressionModel) -> set[str]:
    """State-dict keys of the entropy coders' CDF tables: derived data that `update()` rebuilds."""
    return {
        f"{name}.{buffer}"
        for name, module in model.named_modules()
        for kind, buffers in CDF_BUFFERS.items()
        if isinstance(module, kind)
        for buffer in buffers
    }


def _alias_of(model: CompressionModel) -> dict[str, str]:
    """Second (third, ...) names of a tensor -> its first name in the state dict."""
    first_name: dict[int, str] = {}
    aliases = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        canonical = first_name.setdefault(id(tensor), key)
        if canonical != key:
            aliases[key] = canonical
    return aliases


def _ours_from_published(key: str, bottlenecks: set[str]) -> str:
    module, _, leaf = key.rpartition(".")
    legacy = _LEGACY_LEAF.match(leaf)
    if module in bottlenecks and legacy:
        return f"{module}.{_PLURAL[legacy[1]]}.{legacy[2]}"
    return key


def _published_from_ours(key: str, bottlenecks: set[str]) -> str:
    parts = key.rsplit(".", 2)
    if len(parts) == 3 and parts[0] in bottlenecks and parts[1] in _SINGULAR and parts[2].isdigit():
        return f"{parts[0]}._{_SINGULAR[parts[1]]}{parts[2]}"
    return key


def export_official_state_dict(model: CompressionModel) -> dict[str, Tensor]:
    """`model`'s state dict in the published layout: 1.1 names, aliases kept, CDF tables empty."""
    bottlenecks = _bottleneck_names(model)
    tables = coder_table_keys(model)
    return {
        _published_from_ours(key, bottlenecks): tensor.new_empty(0) if key in tables else tensor
        for key, tensor in model.state_dict().items()
    }


def _published_state(checkpoint: object, source: str) -> dict[str, Tensor]:
    """The tensors of a published file: its `state_dict` entry (or itself), `module.` stripped."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    ):
        raise ValueError(f"{source}: expected a state dict of named tensors (or a dict holding one under 'state_dict')")
    stripped = {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state.items()}
    if len(stripped) != len(state):
        raise ValueError(f"{source}: keys collide once the '{DATA_PARALLEL_PREFIX}' prefix is removed")
    return stripped


def _listing(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    more = f" and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
    return f"{len(keys)} {kind} key(s): {shown}{more}"


def _layout_errors(
    incoming: Mapping[str, Tensor], model: CompressionModel, file_name: Mapping[str, str]
) -> list[str]:
    """Missing, unknown and mis-shaped keys, named as the published layout names them."""
    expected = model.state_dict()
    tables = coder_table_keys(model)
    bottlenecks = _bottleneck_names(model)
    missing = sorted(_published_from_ours(key, bottlenecks) for key in expected.keys() - incoming.keys())
    unknown = sorted(file_name[key] for key in incoming.keys() - expected.keys())
    misshaped = sorted(
        f"{file_name[key]} (file {tuple(incoming[key].shape)} {incoming[key].dtype}, "
        f"model {tuple(expected[key].shape)} {expected[key].dtype})"
        for key in incoming.keys() & expected.keys()
        if key not in tables
        and (incoming[key].shape != expected[key].shape or incoming[key].dtype != expected[key].dtype)
    )
    kinds = (("missing", missing), ("unknown", unknown), ("mis-shaped", misshaped))
    return [_listing(kind, keys) for kind, keys in kinds if keys]


def _widths_in(published: Mapping[str, Tensor]) -> tuple[int, int]:
    """(N, M) read off the first and last analysis convolutions; the published widths if those are absent."""
    first, last = (published.get(f"basic_E.{stage}.conv_groups.0.weight") for stage in (0, 3))
    return (
        first.shape[0] if first is not None else PUBLISHED_N,
        last.shape[0] if last is not None else PUBLISHED_M,
    )


def model_from_official_state(
    checkpoint: object, source: str, N: int | None = None, M: int | None = None
) -> CompressionModel:
    """A SegPIC holding a published-layout checkpoint, eval mode, tables built.

    Widths (N, M) not given are taken from the file, so models trained at other widths load too.
    """
    published = _published_state(checkpoint, source)
    found_N, found_M = _widths_in(published)
    N, M = N or found_N, M or found_M
    model = build_model("segpic", N=N, M=M)
    bottlenecks = _bottleneck_names(model)
    file_name = {_ours_from_published(key, bottlenecks): key for key in published}
    if len(file_name) != len(published):
        twice = sorted(set(published) - set(file_name.values()))
        raise ValueError(f"{source}: " + _listing("duplicated (1.1 and 1.2 names for one tensor)", twice))
    incoming = {ours: published[key] for ours, key in file_name.items()}
    errors = _layout_errors(incoming, model, file_name)
    if errors:
        raise ValueError(f"{source}: not a SegPIC(N={N}, M={M}) checkpoint: " + "; ".join(errors))
    for alias, canonical in _alias_of(model).items():
        if not torch.equal(incoming[alias], incoming[canonical]):
            raise ValueError(f"{source}: {file_name[alias]} and {file_name[canonical]} must hold the same tensor")
        incoming[alias] = incoming[canonical]
    model.load_state_dict(incoming)
    model.eval()
    model.update()
    return model


def load_official_checkpoint(path: str | Path, N: int | None = None, M: int | None = None) -> CompressionModel:
    """Load a published SegPIC checkpoint (or one exported by `export_official_state_dict`).

    Widths not given are read from the file.
    """
    return model_from_official_state(read_torch_file(path), str(path), N=N, M=M)
