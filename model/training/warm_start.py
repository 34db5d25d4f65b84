"""`--init`: start a run from trained weights instead of a random initialisation.

A warm start is how a short study still means something: every run of a study can
fine-tune from one well-trained model, so what differs between partitions is the
fine-tuning alone. Only the weights are taken (ours or the published layout); the run's
optimisers, schedule and step count start afresh, which is what distinguishes it from
`--resume`.
"""

import torch
from compressai.models import CompressionModel

from model.architectures import architecture_name
from model.checkpoints import codec_from_checkpoint
from pipeline.torch_files import read_torch_file
from model.training.config import TrainConfig


def _trained(config: TrainConfig) -> CompressionModel:
    """The warm-start network, refused (naming both) unless it is the one `config` trains."""
    path = config.init
    trained = codec_from_checkpoint(read_torch_file(path), str(path))
    found = f"{architecture_name(trained)}(N={trained.N}, M={trained.M})"
    wanted = f"{config.arch}(N={config.N}, M={config.M})"
    if found != wanted:
        raise ValueError(f"--init {path}: holds {found}, but this run trains {wanted}; pass --arch, --N and --M to match")
    return trained


def check_warm_start(config: TrainConfig) -> None:
    """Refuse an unreadable or mismatched `--init` before anything in the run folder is touched.

    A resumed run takes its weights from its own checkpoint, so the warm start is not read again.
    """
    if config.init is not None and not (config.resume and config.checkpoint_path.is_file()):
        _trained(config)


def load_warm_start(model: CompressionModel, config: TrainConfig) -> None:
    """Copy the weights of `config.init` into `model` (on whatever device it is)."""
    device = next(model.parameters()).device
    weights = _trained(config).state_dict()
    with torch.no_grad():
        model.load_state_dict({key: value.to(device) for key, value in weights.items()})
