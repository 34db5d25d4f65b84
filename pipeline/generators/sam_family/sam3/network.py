"""SAM 3's image model (Meta's `sam3` package) on any device, from a user's checkpoint, unmodified.

The `sam3` 0.1.4 wheel needs two things that this module supplies without editing or forking it:

- Device strings: building the model precomputes position encodings and a decoder buffer with
  `device="cuda"`, and the geometry encoder calls `pin_memory()`; both fail on a machine
  without CUDA. `DeviceRedirect` is a torch function mode that sends every explicit CUDA
  placement to the chosen device (and makes `pin_memory` a no-op off CUDA), so the same
  code builds and runs on the CPU, on `cuda`, or on `cuda:N` of a multi-GPU host.
- The CLIP BPE vocabulary (`bpe_simple_vocab_16e6.txt.gz`), absent from the wheel: taken
  from the installed `open-clip-torch` package (MIT licence; the file is OpenAI CLIP's,
  MIT licence), or from a path the user gives.

Weights come from a user-supplied `sam3.pt` (the dense detector + tracker checkpoint of the
gated `facebook/sam3` release, fetched with `hf download` as the README shows, or found in the
cache folder); the generator never downloads it. `check_checkpoint` compares the file's
parameter names and shapes with the architecture's, built on the meta device (no memory,
about a second), so a wrong or truncated file fails before any image is processed.
"""

import gzip
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from pipeline.generators.sam_family.checkpoints import read_state_dict
from pipeline.generators.sam_family.weights import OfficialWeights, WeightsFamily

VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
DETECTOR_PREFIX = "detector."
TRACKER_PREFIX = "tracker."
INTERACTIVE_PREFIX = "inst_interactive_predictor.model."
# Gated: the Hugging Face account must accept Meta's SAM License first; Meta publishes no sha256.
SAM3_WEIGHTS = WeightsFamily("SAM 3", "sam3", {
    "sam3": OfficialWeights(
        "sam3.pt", "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt", None,
        gated="the file is gated: accept Meta's SAM License on huggingface.co/facebook/sam3, then "
        "`hf auth login` and `hf download facebook/sam3 sam3.pt --local-dir {folder}`",
    ),
}, default="sam3")


class DeviceRedirect(TorchFunctionMode):
    """Torch function mode: explicit CUDA placements go to `device`; off CUDA, `pin_memory` is a no-op.

    On the meta device (`check_checkpoint`) `Tensor.item` returns 0.0: the builder reads
    drop-path rates with it, which do not change parameter names or shapes.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        placed = kwargs.get("device")
        if placed is not None and torch.device(placed).type == "cuda":
            kwargs["device"] = self.device
        if func is torch.Tensor.cuda:
            return args[0].to(self.device)
        if func is torch.Tensor.pin_memory and self.device.type != "cuda":
            return args[0]
        if func is torch.Tensor.item and self.device.type == "meta":
            return 0.0
        return func(*args, **kwargs)


def clip_vocabulary() -> Path:
    """The CLIP BPE vocabulary shipped inside the installed open-clip-torch package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        raise FileNotFoundError(f"no SAM 3 vocabulary: install open-clip-torch (it ships {VOCABULARY_FILE}) or pass vocabulary=PATH")
    return Path(folders[0]) / VOCABULARY_FILE


def check_vocabulary(path: Path) -> Path:
    """`path` if it is a gzip text file of BPE merges (CLIP's starts with a version line), else one-line error."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            header, first_merge = file.readline(), file.readline()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise FileNotFoundError(f"SAM 3 vocabulary {path} is missing or unreadable ({error}); expected CLIP's {VOCABULARY_FILE}") from error
    if not header.startswith("\"bpe_simple_vocab") or len(first_merge.split()) != 2:
        raise ValueError(f"SAM 3 vocabulary {path} is not CLIP's BPE merges file {VOCABULARY_FILE}")
    return path


def _sam3_builder() -> Any:
    """`sam3.model_builder` (heavy: imported only when a network is built), without the process-wide
    TF32 switch its import flips on Ampere and newer GPUs, which would change other generators' fp32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    import sam3.model_builder

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return sam3.model_builder


def build_sam3(vocabulary: Path, device: torch.device) -> torch.nn.Module:
    """SAM 3's image model with instance interactivity, randomly initialised, built on `device`."""
    device = torch.device(device)
    with torch.device(device), DeviceRedirect(device):
        model = _sam3_builder().build_sam3_image_model(
            bpe_path=str(vocabulary), device=str(device), checkpoint_path=None, load_from_HF=False,
            enable_inst_interactivity=True, eval_mode=True,
        )
    return model.to(device).eval()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A `sam3.pt` file's tensors (memory-mapped), renamed to the image model's parameter names."""
    renamed = {}
    for name, tensor in read_state_dict(path).items():
        if name.startswith(DETECTOR_PREFIX):
            renamed[name[len(DETECTOR_PREFIX):]] = tensor
        elif name.startswith(TRACKER_PREFIX):
            renamed[INTERACTIVE_PREFIX + name[len(TRACKER_PREFIX):]] = tensor
    return renamed


def check_checkpoint(path: Path, vocabulary: Path) -> None:
    """Raise one line unless `path` has every parameter of the image model, with the right shape."""
    state = read_checkpoint(path)
    expected = build_sam3(vocabulary, torch.device("meta")).named_parameters()
    missing = [name for name, parameter in expected if name not in state or state[name].shape != parameter.shape]
    if missing:
        raise ValueError(
            f"SAM 3 checkpoint {path} does not fit the image model: {len(missing)} parameter(s) missing or "
            f"of another shape, e.g. {missing[0]} (expected the dense sam3.pt of facebook/sam3)"
        )


def load_sam3(checkpoint: Path, vocabulary: Path, device: torch.device) -> torch.nn.Module:
    """The image model on `device` with the checkpoint's weights (checked by `check_checkpoint`)."""
    model = build_sam3(vocabulary, device)
    model.load_state_dict(read_checkpoint(checkpoint), strict=False)
    return model
