"""`segpic train`: the published optimisation of SegPIC (or the WACNN baseline) on shard data.

Reads top to bottom: process group, data, model, optimisers, resume, loop, checkpoint.
The loop skips steps whose loss is not finite (counted; too many in a row stop the run
with the last good checkpoint untouched), validates periodically to drive the plateau
schedule, and writes checkpoints atomically with everything needed to resume exactly.
"""

import contextlib
import functools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim import Adam
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm import tqdm

from model.architectures import build_model
from model.checkpoints import save_codec, weights_hash
from model.devices import resolve_device
from model.training import distributed, speed
from model.training.config import TrainConfig
from model.training.dataset import TrainingData, build_training_data, pixels_to_unit
from model.training.metrics import MetricsLog, Tracker, psnr, read_summary, write_summary
from model.training.objective import rate_distortion, split_parameters
from model.training.resume import read_training_checkpoint
from model.training.rundir import prepare_run_directory
from model.training.warm_start import check_warm_start, load_warm_start
from model.training.state import (
    Progress,
    experiment_changes,
    restore_training_state,
    training_state,
)


class NonFiniteLossError(ValueError):
    """Too many consecutive non-finite losses: the run stops, its last good checkpoint kept.

    A ValueError because the cause is nearly always a setting (λ, learning rates) or bad
    data, and the command line reports it as one line like other input errors.
    """


@dataclass
class NonFiniteGuard:
    """Counts skipped steps and stops the run after `limit` non-finite losses in a row."""

    limit: int
    checkpoint: Path
    consecutive: int = 0

    def record(self, finite: bool, step: int) -> None:
        self.consecutive = 0 if finite else self.consecutive + 1
        if self.consecutive >= self.limit:
            kept = f"last good checkpoint kept at {self.checkpoint}" if self.checkpoint.is_file() else "no checkpoint written"
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive non-finite losses (last at step {step}); training stopped, {kept}"
            )


@dataclass
class Session:
    """The objects one training process works with."""

    config: TrainConfig
    group: distributed.ProcessGroup
    data: TrainingData
    model: torch.nn.Module
    network: torch.nn.Module
    optimizer: Adam
    aux_optimizer: Adam
    scheduler: ReduceLROnPlateau
    progress: Progress
    changes: list[dict[str, Any]] = field(default_factory=list)
    """Settings changed on resume with --allow-change: step, setting, from, to."""
    heap_kept: bool = False
    """Freed CPU memory stays in the heap (`speed.keep_freed_memory`)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return speed.autocast(self.group.device, self.config.bf16)


def _inputs(session: Session, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = pixels_to_unit(batch["image"].to(session.group.device, non_blocking=True))
    images = images.contiguous(memory_format=speed.memory_format(session.config.channels_last))
    label_map = batch.get("label_map")
    return images, label_map.to(session.group.device, non_blocking=True) if label_map is not None else None


def train_step(session: Session, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """One optimisation step (main loss, clipping, then aux loss); None when skipped as non-finite.

    Returns the step's `LOGGED_TERMS` as one device tensor: read back only when logged,
    so a GPU step needs no host synchronisation besides the finiteness decision.
    """
    session.optimizer.zero_grad(set_to_none=True)
    session.aux_optimizer.zero_grad(set_to_none=True)
    images, label_map = _inputs(session, batch)
    with session.autocast():
        output = session.network(images, mask=label_map, grid=session.config.grid)
    terms = rate_distortion(output, images, session.config.lmbda)
    if not session.group.all_finite(terms.loss):
        return None
    terms.loss.backward()
    torch.nn.utils.clip_grad_norm_(session.model.parameters(), session.config.clip_norm)
    session.optimizer.step()
    aux_loss = session.model.aux_loss()
    aux_loss.backward()
    session.group.average_gradients(session.aux_optimizer.param_groups[0]["params"])
    session.aux_optimizer.step()
    return torch.stack([terms.loss, terms.bpp, terms.mse, aux_loss]).detach().float()


@torch.no_grad()
def validate(session: Session) -> dict[str, float]:
    """Mean loss terms over the validation crops (eval mode: quantised, no noise)."""
    session.model.eval()
    totals = {"loss": 0.0, "bpp": 0.0, "mse": 0.0}
    count = 0
    for batch in session.data.val:
        images, label_map = _inputs(session, batch)
        with session.autocast():
            output = session.model(images, mask=label_map, grid=session.config.grid)
        terms = rate_distortion(output, images, session.config.lmbda)
        for name in totals:
            totals[name] += getattr(terms, name).item() * len(images)
        count += len(images)
    session.model.train()
    means = {name: total / count for name, total in totals.items()}
    return {**means, "psnr": psnr(means["mse"])}


def save_checkpoint(session: Session) -> None:
    """Rank 0 writes model and training state in one atomic file."""
    if not session.group.is_main:
        return
    config = session.config
    state = training_state(
        session.progress, session.optimizer, session.aux_optimizer, session.scheduler, config.experiment(),
        session.changes, config.schedule(),
    )
    save_codec(config.checkpoint_path, session.model, config.arch, config.model_args, extra={"training": state})


def _apply_changes(session: Session, changed: dict[str, tuple[Any, Any]]) -> None:
    """Make allowed changes take effect (the optimisers' saved rates would win otherwise) and record them."""
    config = session.config
    for name, (old, new) in changed.items():
        session.changes.append({"step": session.progress.step, "setting": name, "from": old, "to": new})
    if "lr" in changed:
        for group in session.optimizer.param_groups:
            group["lr"] = config.lr
    if "aux_lr" in changed:
        for group in session.aux_optimizer.param_groups:
            group["lr"] = config.aux_lr
    session.scheduler.factor = config.plateau_factor
    session.scheduler.patience = config.plateau_patience
    batches = session.data.sampler.batches_per_epoch
    if session.progress.batch_in_epoch >= batches:  # a smaller image set: its epoch is already over
        session.progress.epoch, session.progress.batch_in_epoch = session.progress.epoch + 1, 0


def _resume(session: Session) -> None:
    path = session.config.checkpoint_path
    checkpoint = read_training_checkpoint(path)
    state = checkpoint["training"]
    changed = experiment_changes(
        state["experiment"], session.config.experiment(), session.config.allow_changes, str(path)
    )
    session.model.load_state_dict(checkpoint["state_dict"])
    session.progress = restore_training_state(state, session.optimizer, session.aux_optimizer, session.scheduler)
    session.changes = list(state.get("changes", []))
    _apply_changes(session, changed)
    if session.group.is_main:
        changes = "".join(f"; {name} {old} -> {new}" for name, (old, new) in changed.items())
        tqdm.write(f"{session.config.out}: resuming at step {session.progress.step} of {session.config.steps}{changes}", sys.stderr)


def open_session(config: TrainConfig, group: distributed.ProcessGroup) -> Session:
    torch.manual_seed(config.seed)
    data = build_training_data(config, group.rank, group.world_size, pin_memory=group.device.type == "cuda")
    if group.is_main and data.unlabelled:
        named = ", ".join(data.unlabelled[:5]) + (", ..." if len(data.unlabelled) > 5 else "")
        tqdm.write(f"{len(data.unlabelled)} images left out, the masks stage could not label them: {named}", sys.stderr)
    model = build_model(config.arch, **config.model_args)
    model = model.to(group.device, memory_format=speed.memory_format(config.channels_last)).train()
    if config.bf16:
        speed.keep_float32_islands(model, group.device.type)
    main_parameters, aux_parameters = split_parameters(model)
    optimizer = speed.adam(main_parameters, config.lr)
    aux_optimizer = speed.adam(aux_parameters, config.aux_lr)
    scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
    session = Session(config, group, data, model, model, optimizer, aux_optimizer, scheduler, Progress())
    session.heap_kept = group.device.type == "cpu" and speed.keep_freed_memory()
    if config.resume and config.checkpoint_path.is_file():
        _resume(session)
    elif config.init is not None:
        load_warm_start(model, config)
    session.network = speed.compiled(group.wrap(model), config.compile)
    return session


def _end_of_step(session: Session, tracker: Tracker, guard: NonFiniteGuard) -> bool:
    """Periodic logging, validation (driving the plateau schedule) and checkpointing; True when done."""
    config, step = session.config, session.progress.step
    finished = step >= config.steps
    if step % config.log_every == 0 or finished:
        tracker.log_train(step, session.optimizer.param_groups[0]["lr"])
    scheduled = step % config.val_every == 0
    if scheduled or finished:
        plateau_loss = tracker.log_validation(step, validate(session) if session.data.val is not None else {})
        # Only scheduled validations move the schedule: a run stopped early and resumed stays on course.
        if scheduled:
            session.scheduler.step(plateau_loss)
    # Mid-streak states are not "good": keep the previous checkpoint until a finite step.
    if (step % config.checkpoint_every == 0 and guard.consecutive == 0) or finished:
        save_checkpoint(session)
    return finished


def train_loop(session: Session, metrics: MetricsLog | None) -> dict[str, dict[str, float]]:
    """Train to `config.steps`; returns the last logged training and validation means."""
    config, progress = session.config, session.progress
    guard = NonFiniteGuard(config.max_nonfinite, config.checkpoint_path)
    tracker = Tracker(metrics)
    show = config.progress and session.group.is_main
    if progress.step >= config.steps and session.data.val is not None:
        tracker.last["val"] = validate(session)  # resumed a finished run: still report where it stands
    with tqdm(total=config.steps, initial=progress.step, unit="step", disable=not show) as bar:
        while progress.step < config.steps:
            session.data.sampler.set_position(progress.epoch, progress.batch_in_epoch)
            for batch in session.data.train:
                values = train_step(session, batch)
                progress.nonfinite_steps += values is None
                guard.record(values is not None, progress.step + 1)
                progress.advance(session.data.sampler.batches_per_epoch)
                bar.update(1)
                if values is not None:
                    tracker.add(values)
                finished = _end_of_step(session, tracker, guard)
                if progress.step % config.log_every == 0 and tracker.last["train"]:
                    logged = tracker.last["train"]  # read back only at log steps: no per-step host sync
                    bar.set_postfix(loss=f"{logged['loss']:.4g}", bpp=f"{logged['bpp']:.3f}", refresh=False)
                if finished:
                    break
    return tracker.last


@dataclass(frozen=True)
class TrainResult:
    """What a training run did: its summary (the metrics.json document) and whether it had already finished.

    `already_finished`: a resumed run that had reached its steps before; nothing was trained
    and its files are untouched.
    """

    summary: dict[str, Any]
    already_finished: bool = False

    @property
    def step(self) -> int:
        return self.summary["step"]


def finished_summary(config: TrainConfig) -> dict | None:
    """The untouched summary of a resumed run that already reached `config.steps`, else None.

    Only a run whose metrics.json matches its checkpoint's step counts as finished; a run
    killed between its last checkpoint and its summary is completed the normal way.
    """
    if not (config.resume and config.metrics_path.is_file() and config.checkpoint_path.is_file()):
        return None
    step = read_training_checkpoint(config.checkpoint_path)["training"]["progress"]["step"]
    summary = read_summary(config.metrics_path)
    if step < config.steps or summary.get("step") != step:
        return None
    return summary


def _summary(session: Session, last: dict[str, dict[str, float]], seconds: float) -> dict:
    """metrics.json: final means and the settings really in effect (resolved device, current rates, changes)."""
    config, group = session.config, session.group
    return {
        **last,
        "step": session.progress.step,
        "nonfinite_steps": session.progress.nonfinite_steps,
        "world_size": group.world_size,
        "seconds": seconds,
        "checkpoint": str(config.checkpoint_path),
        "weights_hash": weights_hash(session.model),
        "config": {**config.record(), "device": str(group.device)},
        "in_effect": {
            "lr": session.optimizer.param_groups[0]["lr"],
            "aux_lr": session.aux_optimizer.param_groups[0]["lr"],
            "torch_threads": torch.get_num_threads(),
            "cpu_heap_kept": session.heap_kept,
        },
        "changes": session.changes,
    }


def run(config: TrainConfig, prepared: bool = False) -> TrainResult:
    """Train in this process (alone, or as one rank of a torchrun/spawned group); each rank returns its summary.

    `prepared`: the launcher already checked the device and the run directory.
    """
    if not prepared:
        resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        if int(os.environ.get("RANK", "0")) == 0:  # other ranks would see rank 0's first files as another run
            check_warm_start(config)
            prepare_run_directory(config)
        finished = finished_summary(config)
        if finished is not None:
            return TrainResult(finished, already_finished=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    group = distributed.start(config.device)
    started = time.monotonic()
    try:
        session = open_session(config, group)
        resumed = config.resume and config.checkpoint_path.is_file()
        metrics = MetricsLog(config.metrics_dir, session.progress.step if resumed else None) if group.is_main else None
        try:
            last = train_loop(session, metrics)
        finally:
            if metrics:
                metrics.close()
        summary = _summary(session, last, time.monotonic() - started)
        if group.is_main:
            write_summary(config.metrics_path, summary)
        return TrainResult(summary)
    finally:
        distributed.stop(group)


def train(config: TrainConfig) -> TrainResult:
    """Entry point of `segpic train`: spawns `config.nproc` local processes unless already inside a group.

    The launcher checks the device and the run directory first, so a wrong option fails
    once, in one line, before any process starts.
    """
    if distributed.in_process_group() or config.nproc == 1:
        return run(config)
    resolve_device(config.device)
    check_warm_start(config)
    prepare_run_directory(config)
    finished = finished_summary(config)
    if finished is not None:
        return TrainResult(finished, already_finished=True)
    distributed.spawn(functools.partial(run, prepared=True), config, config.nproc)
    return TrainResult(read_summary(config.metrics_path))
