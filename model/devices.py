"""Where a codec computes: the one device check shared by coding, evaluation and training.

It sits below both `model.bitstream` (inference) and `model.training` so that coding an image
never imports training code; a training process passes its local rank.
"""

import torch


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """`auto` picks the local rank's GPU when there is one, else the CPU; refuses devices this run cannot use."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {choice!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {choice}: no CUDA GPU is visible to torch here; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device
