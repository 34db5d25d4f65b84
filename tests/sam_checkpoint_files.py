"""SAM-family checkpoint files with the published networks' tensor names and shapes, and no weights to speak of.

Every tensor is a view of one zero (stride 0), so a vit_h or SAM 2.1 large file takes a few
kilobytes and is written in a second, yet it loads into the real network as Meta's file
would (an all-zero network, which finds no object): what telling sizes and families apart
reads is the tensors' names and shapes. The networks are built on the meta device.
"""

from pathlib import Path

import torch
from sam2.build_sam import build_sam2
from segment_anything import sam_model_registry

from pipeline.generators.sam_family.sam2.generator import SAM21_CONFIGS
from pipeline.generators.sam_family.sam3.network import DeviceRedirect

SAM21_ONLY_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")


def zero_state(network: torch.nn.Module, value: float = 0.0) -> dict[str, torch.Tensor]:
    """The network's state dict with every tensor a stride-0 view of a single number (zero unless `value`)."""
    scalar = torch.full((), value)
    return {name: scalar.expand(tensor.shape) for name, tensor in network.state_dict().items()}


def write_sam_checkpoint(path: Path, model: str, value: float = 0.0) -> Path:
    """A SAM 1 file (a bare state dict, as `sam_vit_b_01ec64.pth`) of `model` vit_b, vit_l or vit_h.

    Files of other `value`s have the same size and other bytes: other weights under the same name.
    """
    with torch.device("meta"):
        network = sam_model_registry[model]()
    torch.save(zero_state(network, value), path)
    return path


def write_sam2_checkpoint(path: Path, model: str, release: str = "2.1") -> Path:
    """A SAM 2.1 file (`{"model": state_dict}`) of `model` tiny ... large; release "2" leaves out 2.1's tensors."""
    meta = torch.device("meta")
    with meta, DeviceRedirect(meta):
        network = build_sam2(SAM21_CONFIGS[model], None, device="meta", apply_postprocessing=False)
    state = zero_state(network)
    if release == "2":
        state = {name: tensor for name, tensor in state.items() if name not in SAM21_ONLY_KEYS}
    torch.save({"model": state}, path)
    return path
