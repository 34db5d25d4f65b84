"""Training configuration: one frozen dataclass, its presets and the partition option.

Everything a run depends on lives here, so a checkpoint can record it and a resumed
run can refuse a configuration that would silently change the experiment.
"""

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PARTITION_GRID = "grid"
PARTITION_MASKS_PREFIX = "masks:"
CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_PRESET = "paper"
PAPER_LOADER_WORKERS = 4

EXPERIMENT_SETTINGS = (
    "preset", "arch", "N", "M", "lmbda", "crop", "batch_size", "grid", "seed", "val_count", "nproc",
    "lr", "aux_lr", "clip_norm", "plateau_factor", "plateau_patience",
)
"""Scalar settings a resumed run must share with its checkpoint (plus the data folders)."""

CHANGEABLE_ON_RESUME = (
    "lmbda", "lr", "aux_lr", "clip_norm", "plateau_factor", "plateau_patience",
    "images", "partition", "val_images", "val_masks",
)
"""What `--allow-change` may change when resuming; the rest would not fit the saved weights or data order."""

SCHEDULE_SETTINGS = ("steps", "val_every", "checkpoint_every", "log_every")
"""Recorded in the checkpoint beside the experiment, but free to change on resume (e.g. training on to more steps)."""

DATA_SETTINGS = ("images", "partition", "val_images", "val_masks")
RECORDED_SETTINGS = (*EXPERIMENT_SETTINGS, *DATA_SETTINGS, "init", *SCHEDULE_SETTINGS)
"""What a resumed run keeps from its checkpoint unless an option gives another value."""


def loader_workers() -> int:
    """The published 4 loader processes, or one per CPU core this process may use where there are fewer
    (more processes than cores only contend, and torch warns about it once per loader)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(PAPER_LOADER_WORKERS, cores)


@dataclass(frozen=True)
class Partition:
    """Where training prototypes come from: the model's g×g grid, or label maps in mask shards."""

    masks_dir: Path | None = None

    @property
    def uses_masks(self) -> bool:
        return self.masks_dir is not None

    def __str__(self) -> str:
        return PARTITION_GRID if self.masks_dir is None else f"{PARTITION_MASKS_PREFIX}{self.masks_dir}"


def parse_partition(text: str, masks_root: Path | None = None) -> Partition:
    """Read `grid`, `masks:DIR`, or (given `masks_root`) a mask source name meaning `masks_root/NAME`."""
    if text == PARTITION_GRID:
        return Partition()
    if text.startswith(PARTITION_MASKS_PREFIX) and len(text) > len(PARTITION_MASKS_PREFIX):
        return Partition(Path(text[len(PARTITION_MASKS_PREFIX) :]))
    if masks_root is not None and text and "/" not in text and ":" not in text:
        return Partition(masks_root / text)
    raise ValueError(f"partition must be 'grid', 'masks:DIR' or (with a masks root) a mask source name, got {text!r}")


PRESET = "from --preset"
REQUIRED = "required"
OPTION = "option"  # the metadata key of a field's `Option`


@dataclass(frozen=True)
class Option:
    """How `segpic train` offers one `TrainConfig` field, and which `params.yaml` key the DVC study sets it from.

    This is the setting's one declaration: the command's options are built from these
    (`pipeline/cli/train.py`), `preset_config` takes their values by field name, and the
    tests hold both DVC training stages to the `study` keys. `help_default` is what `--help`
    says an omitted option takes (PRESET, REQUIRED, a value in words, or None: nothing); that a
    `--resume` keeps the run's own value instead follows from RECORDED_SETTINGS.
    """

    help: str
    help_default: str | None = PRESET
    flag: str = ""  # when it is not the field's name with dashes
    study: str = ""  # its key in params.yaml's `train` section, passed by both DVC training stages
    text: Any = None  # what the command line gives where it is not the field's type (`preset_config` reads it)

    def name(self, field_name: str) -> str:
        return self.flag or "--" + field_name.replace("_", "-")


def option(help: str, default: Any = MISSING, *, factory: Any = MISSING, **declared: Any) -> Any:
    """A `TrainConfig` field that `segpic train` offers as an option (`Option` says how)."""
    return field(default=default, default_factory=factory, metadata={OPTION: Option(help, **declared)})


def command_line_options() -> dict[str, Option]:
    """Every `TrainConfig` field that `segpic train` offers, in the config's order, with its declaration."""
    return {item.name: item.metadata[OPTION] for item in fields(TrainConfig) if OPTION in item.metadata}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sizes default to the published setting (`docs/architecture.md` §5)."""

    images: Path = option("Image shard directory (segpic ingest).", help_default=REQUIRED)
    out: Path = option("Run directory: checkpoint.pt, metrics.json, live/ plots.", help_default=None)
    partition: Partition = option(
        "'grid' (no masks), 'masks:DIR' (aligned mask shards) or NAME (= masks:MASKS_ROOT/NAME).",
        factory=Partition, help_default="grid", text=str,
    )
    preset: str = option("'paper' (published sizes) or 'tiny' (CPU smoke runs).", "paper", help_default="paper", study="preset")
    arch: str = option("Architecture: segpic or wacnn.", "segpic", study="arch")
    N: int = option("Width N of the 1/4- and 1/16-scale features.", 192, flag="--N", study="N")
    M: int = option("Width M of the latent y.", 320, flag="--M", study="M")
    lmbda: float = option("Rate-distortion trade-off λ (loss = λ·255²·MSE + bpp).", 0.0130)
    crop: int = option("Training crop size (multiple of 64).", 256, study="crop")
    batch_size: int = option("Crops per step and process.", 8, study="batch")
    steps: int = option("Optimiser steps to train to (counting resumed ones).", 1_000_000, study="steps")
    lr: float = option("Main Adam learning rate.", 1e-4, study="lr")
    aux_lr: float = option("Adam learning rate of the bottlenecks' quantiles.", 1e-3, study="aux_lr")
    clip_norm: float = 1.0
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    grid: int = option("Prototype grid g (g×g regions) of the grid partition and of validation.", 4, study="grid")
    seed: int = option("Seed of initialisation, order and crops.", 0, study="seed")
    num_workers: int = option("DataLoader worker processes (at most one per CPU core).", factory=loader_workers, flag="--workers")
    decoded_cache_mb: int = option("Decoded-image cache per loader process (MiB).", 1024)
    init: Path | None = option(
        "Warm start from this checkpoint's weights (fresh optimisers, step 0); {lmbda} in it stands for "
        "the run's λ (tiny-grid-{lmbda}.pth.tar); empty: random initialisation.",
        None, help_default="none", study="init", text=str,
    )
    """Warm start: the weights of this checkpoint at step 0 (`model.training.warm_start`); see LAMBDA_FIELD."""
    val_images: Path | None = option("Separate validation image shards.", None, help_default="none")
    val_masks: Path | None = option("Mask shards aligned with --val-images.", None, help_default="none")
    val_count: int = option("Images held out for validation without --val-images.", 1, study="val_count")
    val_every: int = option("Validate every this many steps.", 5000)
    checkpoint_every: int = option("Write the resumable checkpoint every this many steps.", 5000)
    log_every: int = option("Log training means every this many steps.", 100)
    max_nonfinite: int = 10
    resume: bool = option("Continue from OUT/checkpoint.pt when it exists.", False, help_default=None)
    overwrite: bool = option("Delete the run already in OUT and start afresh.", False, help_default=None)
    allow_changes: tuple[str, ...] = option(
        "With --resume: a setting that may differ from the checkpoint's (e.g. lr); repeatable.",
        (), help_default=None, flag="--allow-change", text=list[str],
    )
    nproc: int = option("Local processes (DDP); under torchrun leave at 1.", 1, study="nproc")
    device: str = option("auto, cpu, cuda or cuda:N.", "auto")
    bf16: bool = option("bf16 autocast; entropy models, GDN and likelihoods stay float32.", False, help_default=None)
    channels_last: bool = option("Channels-last memory layout for the network.", False, help_default=None)
    compile: bool = option("torch.compile the network (first steps pay the compilation).", False, help_default=None)
    threads: int | None = option("torch CPU threads per process.", None)
    live_dir: Path | None = option("dvclive directory (default OUT/live).", None, help_default=None)
    progress: bool = option("Show a progress bar.", True, help_default=None)

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.crop % 64:
            raise ValueError(f"crop must be a positive multiple of 64 (the model's padding unit), got {self.crop}")
        for name in ("batch_size", "steps", "val_every", "checkpoint_every", "log_every", "max_nonfinite", "nproc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if min(self.num_workers, self.val_count, self.decoded_cache_mb) < 0:
            raise ValueError("num_workers, val_count and decoded_cache_mb must not be negative")
        if self.val_masks is not None and self.val_images is None:
            raise ValueError("val_masks needs val_images")
        if self.val_images is not None and self.partition.uses_masks and self.val_masks is None:
            raise ValueError("training with masks and separate val_images needs val_masks too")
        if self.lmbda < 0:
            raise ValueError(f"lmbda must not be negative, got {self.lmbda}")
        if self.arch == "wacnn" and (self.partition.uses_masks or self.val_masks is not None):
            raise ValueError("--arch wacnn has no prototypes and cannot use masks: train it with --partition grid")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: choose one")
        unknown = sorted(set(self.allow_changes) - set(CHANGEABLE_ON_RESUME))
        if unknown:
            raise ValueError(
                f"--allow-change {', '.join(unknown)}: only {', '.join(CHANGEABLE_ON_RESUME)} may change on resume"
            )

    @property
    def model_args(self) -> dict[str, int]:
        """Arguments of `build_model`, saved in every checkpoint to rebuild the network."""
        return {"N": self.N, "M": self.M}

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.json"

    @property
    def metrics_dir(self) -> Path:
        return self.live_dir if self.live_dir is not None else self.out / "live"

    def record(self) -> dict[str, Any]:
        """Every setting as JSON-safe values (paths and the partition as text), for metrics files."""
        return {
            item.name: str(value) if isinstance(value, (Path, Partition)) else value
            for item in fields(self)
            for value in [getattr(self, item.name)]
        }

    def experiment(self) -> dict[str, Any]:
        """The settings that define the experiment; a resumed run must agree on all of them.

        Data folders are compared as absolute paths: pointing a resumed run at other images
        or masks makes it another experiment unless `--allow-change` says so.
        """
        record: dict[str, Any] = {key: getattr(self, key) for key in EXPERIMENT_SETTINGS}
        for key in ("images", "val_images", "val_masks", "init"):
            value = getattr(self, key)
            record[key] = str(value.resolve()) if value is not None else None
        masks = self.partition.masks_dir
        record["partition"] = f"{PARTITION_MASKS_PREFIX}{masks.resolve()}" if masks is not None else PARTITION_GRID
        return record

    def schedule(self) -> dict[str, int]:
        """Length and intervals of the run: recorded so that a resume keeps them, never compared."""
        return {key: getattr(self, key) for key in SCHEDULE_SETTINGS}


LAMBDA_FIELD = "{lmbda}"
"""In `init`, stands for the run's λ, so one setting names a warm start per λ (`tiny-grid-{lmbda}.pth.tar`)."""

# Presets are starting points; explicit options override them field by field.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "N": 24,
        "M": 40,
        "crop": 64,
        "batch_size": 4,
        "steps": 150,
        "lr": 1e-3,
        "num_workers": 0,
        "val_every": 50,
        "checkpoint_every": 50,
        "log_every": 10,
        "plateau_patience": 2,
        # One thread: on a shared 2-core machine two intra-op threads spin and run ~5x slower.
        "threads": 1,
    },
}


def _from_record(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's recorded settings as config values (paths and the partition parsed back)."""
    values = {key: recorded[key] for key in RECORDED_SETTINGS if key in recorded}
    for key in ("images", "val_images", "val_masks", "init"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    if "partition" in values:
        values["partition"] = parse_partition(values["partition"])
    return values


def _read_text(overrides: Mapping[str, Any], masks_root: Path | None) -> dict[str, Any]:
    """Overrides with the command line's text forms read (`Option.text`): a partition, a warm start, setting names."""
    values = dict(overrides)
    if isinstance(values.get("partition"), str):
        values["partition"] = parse_partition(values["partition"], masks_root)
    if isinstance(values.get("init"), str):
        values["init"] = Path(values["init"]) if values["init"] else None  # empty: not given
    if isinstance(values.get("allow_changes"), list):
        values["allow_changes"] = tuple(name.strip() for value in values["allow_changes"] for name in value.split(",") if name.strip())
    return values


def preset_config(
    preset: str | None,
    images: Path | None,
    out: Path,
    recorded: Mapping[str, Any] | None = None,
    masks_root: Path | None = None,
    **overrides: Any,
) -> TrainConfig:
    """Config of a named preset with `overrides` applied (None values mean "not given").

    `recorded`: on a resume, the settings the run's checkpoint holds. They win over the
    preset, so an option the user does not repeat keeps the run's value (a change accepted
    with --allow-change included) and only what the user gives can differ from the run.
    Overrides may come as the command line gives them (`Option.text`): `partition` as text
    (a mask source's name is a folder of `masks_root`), `init` as a path or "", and
    `allow_changes` as a list of comma-separated names.
    """
    recorded = _from_record(recorded or {})
    recorded_preset, recorded_images = recorded.pop("preset", None), recorded.pop("images", None)
    preset = preset or recorded_preset or DEFAULT_PRESET
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    images = images or recorded_images
    if images is None:
        raise ValueError("--images is required (a --resume of a run may leave it out to keep the run's)")
    known = {item.name for item in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    chosen = {key: value for key, value in _read_text(overrides, masks_root).items() if value is not None}
    config = replace(TrainConfig(images=images, out=out), **{**PRESETS[preset], **recorded, "preset": preset, **chosen})
    if config.init is not None and LAMBDA_FIELD in str(config.init):
        config = replace(config, init=Path(str(config.init).replace(LAMBDA_FIELD, str(config.lmbda))))
    return config
