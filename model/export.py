"""Export a checkpoint to the published SegPIC layout (`segpic export`)."""

from pathlib import Path

from model.architectures import architecture_name
from model.checkpoints import load_codec, save_official_checkpoint


def export_published_checkpoint(checkpoint: Path, output: Path) -> None:
    """Load `checkpoint` (ours or published) and write its weights in the published layout.

    Only SegPIC has a published layout; other architectures are refused.
    """
    if Path(output).resolve() == Path(checkpoint).resolve():
        raise ValueError(f"{output}: refusing to overwrite the checkpoint being exported")
    model = load_codec(checkpoint)
    arch = architecture_name(model)
    if arch != "segpic":
        raise ValueError(f"{checkpoint}: a {arch} checkpoint has no published layout (only segpic has one)")
    save_official_checkpoint(output, model)
