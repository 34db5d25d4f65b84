"""What a SAM-family checkpoint holds, read from its own tensors: which network, which size.

The likeliest slip with SAM weights is a file of another size or family than the settings
say (`sam_vit_b_01ec64.pth` with `model=vit_h`, a SAM 1 file given to `sam2`), and loading
it reports pages of missing keys. The file itself tells: the sizes differ in the image
encoder, so `model` need not be given at all, and a mismatch is named in one line with
what to pass instead.

- SAM 1 (`sam`): a bare state dict; the ViT's width is 768 (vit_b), 1024 (vit_l), 1280 (vit_h).
- SAM 2 / 2.1 (`sam2`): `{"model": state_dict}`; the Hiera trunk's width and number of blocks
  are (96, 12) tiny, (96, 16) small, (112, 24) base_plus, (144, 48) large; only 2.1 has
  `no_obj_embed_spatial` (the `sam2` generator builds 2.1).
- SAM 3 (`sam3`): the detector's and tracker's tensors under `detector.` and `tracker.`.

Files are read memory-mapped and with `weights_only=True` (`pipeline.torch_files`): a 2.5 GB
checkpoint costs nothing to identify.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.generators.sam_family.weights import WeightsFamily
from pipeline.torch_files import read_torch_file

SAM_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"
SAM_SIZES = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
HIERA_PATCH_EMBED = "image_encoder.trunk.patch_embed.proj.weight"
HIERA_BLOCK = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")
HIERA_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
SAM21_ONLY = "no_obj_embed_spatial"
SAM3_PREFIX = "detector."
SHOWN_KEYS = 2


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint holds: `title` in words, the `generator` that builds it and its `model` setting.

    `generator` is empty when no generator here builds it (SAM 2 before 2.1, other networks);
    `model` is empty when its size is none of the published ones.
    """

    title: str
    generator: str = ""
    model: str = ""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a SAM-family file (unwrapping SAM 2's and SAM 3's `{"model": ...}`), memory-mapped."""
    state = read_torch_file(path, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path}: a torch file, but not a checkpoint of tensors by name (a state dict)")
    return state


def _hiera_contents(state: Mapping[str, torch.Tensor]) -> CheckpointContents:
    blocks = 1 + max((int(match.group(1)) for key in state if (match := HIERA_BLOCK.match(key))), default=-1)
    model = HIERA_SIZES.get((state[HIERA_PATCH_EMBED].shape[0], blocks), "")
    size = model or f"of no published size ({state[HIERA_PATCH_EMBED].shape[0]} wide, {blocks} blocks)"
    if SAM21_ONLY not in state:
        return CheckpointContents(f"SAM 2 {size} (the first release; the sam2 generator builds SAM 2.1)")
    return CheckpointContents(f"SAM 2.1 {size}", "sam2", model)


def identify_state(state: Mapping[str, torch.Tensor]) -> CheckpointContents:
    """Which SAM-family network `state` holds, from the shapes of a few of its tensors."""
    if SAM_PATCH_EMBED in state:
        width = state[SAM_PATCH_EMBED].shape[0]
        model = SAM_SIZES.get(width, "")
        return CheckpointContents(f"SAM {model or f'with an encoder {width} wide (no published size)'}", "sam", model)
    if HIERA_PATCH_EMBED in state:
        return _hiera_contents(state)
    if any(key.startswith(SAM3_PREFIX) for key in state):
        return CheckpointContents("SAM 3", "sam3", "sam3")
    shown = ", ".join(list(state)[:SHOWN_KEYS])
    return CheckpointContents(f"no SAM-family network (tensors such as {shown or 'none at all'})")


def identify_checkpoint(path: Path) -> CheckpointContents:
    """Which SAM-family network the file at `path` holds; one-line ValueError for a file that is no checkpoint."""
    return identify_state(read_state_dict(path))


def checked_model(path: Path, contents: CheckpointContents, generator: str, family: WeightsFamily, given: str) -> str:
    """The `model` of the checkpoint at `path` for `generator`; one line naming the file, what it holds and what to pass.

    `given`: the user's `model` setting, empty when it is left to the file.
    """
    example = family.weights[family.default].file_name
    if contents.generator != generator:
        remedy = f"run it with --generator {contents.generator}" if contents.generator else f"pass a {family.title} checkpoint (e.g. {example})"
        raise ValueError(f"{path} holds {contents.title}, not {family.title}: {remedy}")
    if not contents.model:
        raise ValueError(f"{path} holds {contents.title}; the {generator} generator builds {', '.join(family.weights)}")
    if given and given != contents.model:
        raise ValueError(
            f"{path} holds {contents.title}, not {given}: pass model={contents.model}, or leave model out to read it from the file"
        )
    return contents.model


def load_checked(network: torch.nn.Module, path: Path, contents: CheckpointContents) -> torch.nn.Module:
    """`network` with the file's tensors; one line (not pages of keys) when they do not fit it."""
    try:
        result = network.load_state_dict(read_state_dict(path), strict=False)
    except RuntimeError as error:  # tensors of another shape: torch lists every one
        raise ValueError(f"{path} holds {contents.title} with tensors of other shapes ({str(error).splitlines()[-1].strip()})") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} holds {contents.title} but not all of it: {len(result.missing_keys)} tensor(s) missing "
            f"({', '.join(result.missing_keys[:SHOWN_KEYS])}), {len(result.unexpected_keys)} unexpected "
            f"({', '.join(result.unexpected_keys[:SHOWN_KEYS])}); download or copy it again"
        )
    return network
