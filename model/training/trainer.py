"""`segpic train`: the published optimisation of SegPIC (or the WACNN baseline) on shard data.

Reads top to bottom: process group, data, model, optimisers, resume, loop, checkpoint.
The loop skips steps whose loss is not finite (counted; too many in a row stop the run
with the last good checkpoint untouched), validates periodically to drive the plateau
schedule, and writes checkpoints atomically with everything needed to resume exactly.
"""

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim import Adam
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm import tqdm

from model.architectures import build_model
from model.checkpoints import is_our_checkpoint, save_codec, weights_hash
from model.official import read_weights_file
from model.training import distributed
from model.training.config import TrainConfig
from model.training.dataset import TrainingData, build_training_data, pixels_to_unit
from model.training.metrics import MetricsLog, Tracker, psnr, read_summary, write_summary
from model.training.objective import rate_distortion, split_parameters
from model.training.state import Progress, restore_training_state, training_state


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

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on GPU when asked; a no-op on CPU so the CPU path is unchanged."""
        enabled = self.config.bf16 and self.group.device.type == "cuda"
        return torch.autocast(self.group.device.type, dtype=torch.bfloat16, enabled=enabled)


def _inputs(session: Session, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = pixels_to_unit(batch["image"].to(session.group.device, non_blocking=True))
    label_map = batch.get("label_map")
    return images, label_map.to(session.group.device, non_blocking=True) if label_map is not None else None


def train_step(session: Session, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
    """One optimisation step (main loss, clipping, then aux loss); None when skipped as non-finite."""
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
    mse = terms.mse.item()
    return {"loss": terms.loss.item(), "bpp": terms.bpp.item(), "mse": mse, "psnr": psnr(mse), "aux_loss": aux_loss.item()}


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
        session.progress, session.optimizer, session.aux_optimizer, session.scheduler, config.experiment()
    )
    save_codec(config.checkpoint_path, session.model, config.arch, config.model_args, extra={"training": state})


def _resume(session: Session) -> None:
    path = session.config.checkpoint_path
    checkpoint = read_weights_file(path)
    if not is_our_checkpoint(checkpoint) or "training" not in checkpoint:
        raise ValueError(f"{path}: not a resumable training checkpoint (no training state)")
    session.progress = restore_training_state(
        checkpoint["training"],
        session.optimizer,
        session.aux_optimizer,
        session.scheduler,
        session.config.experiment(),
        str(path),
    )
    session.model.load_state_dict(checkpoint["state_dict"])


def open_session(config: TrainConfig, group: distributed.ProcessGroup) -> Session:
    torch.manual_seed(config.seed)
    data = build_training_data(config, group.rank, group.world_size)
    if group.is_main and data.unlabelled:
        named = ", ".join(data.unlabelled[:5]) + (", ..." if len(data.unlabelled) > 5 else "")
        tqdm.write(f"{len(data.unlabelled)} images left out, the masks stage could not label them: {named}", sys.stderr)
    model = build_model(config.arch, **config.model_args).to(group.device).train()
    main_parameters, aux_parameters = split_parameters(model)
    optimizer = Adam(main_parameters, lr=config.lr)
    aux_optimizer = Adam(aux_parameters, lr=config.aux_lr)
    scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
    session = Session(config, group, data, model, model, optimizer, aux_optimizer, scheduler, Progress())
    if config.resume and config.checkpoint_path.is_file():
        _resume(session)
    session.network = group.wrap(model)
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
                    bar.set_postfix(loss=f"{values['loss']:.4g}", bpp=f"{values['bpp']:.3f}", refresh=False)
                if _end_of_step(session, tracker, guard):
                    break
    return tracker.last


def run(config: TrainConfig) -> dict:
    """Train in this process (alone, or as one rank of a torchrun/spawned group); rank 0 returns the summary."""
    if config.threads:
        torch.set_num_threads(config.threads)
    group = distributed.start(config.device)
    started = time.monotonic()
    try:
        session = open_session(config, group)
        metrics = MetricsLog(config.metrics_dir, resume=config.resume) if group.is_main else None
        try:
            last = train_loop(session, metrics)
        finally:
            if metrics:
                metrics.close()
        summary = {
            **last,
            "step": session.progress.step,
            "nonfinite_steps": session.progress.nonfinite_steps,
            "world_size": group.world_size,
            "seconds": time.monotonic() - started,
            "checkpoint": str(config.checkpoint_path),
            "weights_hash": weights_hash(session.model),
            "config": config.record(),
        }
        if group.is_main:
            write_summary(config.metrics_path, summary)
        return summary
    finally:
        distributed.stop(group)


def train(config: TrainConfig) -> dict:
    """Entry point of `segpic train`: spawns `config.nproc` local processes unless already inside a group."""
    if config.nproc > 1 and not distributed.in_process_group():
        distributed.spawn(run, config, config.nproc)
        return read_summary(config.metrics_path)
    return run(config)
