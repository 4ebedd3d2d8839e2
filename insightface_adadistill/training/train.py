"""arcface_torch's training loop, plus distillation (what `adadistill train CONFIG` runs).

The same code runs in one process (`adadistill train`: gloo on CPU, nccl on one GPU) and in many
(`torchrun --nproc_per_node=N -m insightface_adadistill train CONFIG`). `train()` and `_run()` read top
to bottom; the state and its checkpoint sets are `training/checkpoint/`; what survives which fault and
what resume checks: docs/safety.md.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from insightface_adadistill import distributed
from insightface_adadistill.cache import (CachedTeacherDataset, TeacherSpec, content_identity, open_teacher_cache,
                                          run_identity)
from insightface_adadistill.config import RunConfig, format_config
from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.data.loader import build_dataloader
from insightface_adadistill.errors import InputNotFoundError, UserError
from insightface_adadistill.evaluation.verification import VerificationSet, evaluate_backbone
from insightface_adadistill.outputs import claim_output
from insightface_adadistill.training import checkpoint
from insightface_adadistill.training.compile import explain_compile_failure
from insightface_adadistill.training.models import Models, assemble
from insightface_adadistill.training.monitor import TrainingMonitor, errors_logged, held_log_records, setup_logging
from insightface_adadistill.training.optim import build_optimizer, host_param_groups
from insightface_adadistill.training.schedule import build_scheduler, scaled_lr
from insightface_adadistill.training.step import DistillStep
from insightface_adadistill.training.summary import run_summary

logger = logging.getLogger("insightface_adadistill.train")


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN/Inf; the last complete checkpoint set is left untouched."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished `train()` did: `global_step` is the last step trained (and saved, when
    `stopped_by_signal`: SIGTERM or Ctrl-C stopped the run, its `model.pt` is not the trained model, and
    `resume=True` continues it)."""

    output: Path
    global_step: int
    stopped_by_signal: bool


def train(cfg: RunConfig, dist: distributed.DistInfo) -> TrainResult:
    """Run one training job described by a validated config. Rank 0 holds the output folder's lock for the
    whole run; SIGTERM/SIGINT handlers are installed for it, the previous ones restored also after an error."""
    output = Path(cfg.output)
    fingerprint = checkpoint.config_snapshot(cfg.as_dict())  # completed by _build_loader, saved with every set
    with (_output_claimed(cfg, dist, fingerprint) as resume_from, StopRequest() as stop,
          explain_compile_failure(cfg.compile)):
        return _run(cfg, dist, output, stop, fingerprint, resume_from)


def _run(cfg: RunConfig, dist: distributed.DistInfo, output: Path, stop: "StopRequest",
         fingerprint: Dict[str, Any], resume_from: Optional[Path]) -> TrainResult:
    # ---- seed and config (the output folder is claimed and the log open: _output_claimed) ------
    started = time.monotonic()
    _seed_everything(cfg.seed)
    torch.backends.cudnn.benchmark = True  # fixed 112x112 input: autotuned kernels pay off (host does it)
    for line in format_config(cfg):
        logger.info(line)

    # ---- data, models, optimizer and schedule -----------------------------------------------
    loader = _build_loader(cfg, dist, fingerprint)
    steps_per_epoch = loader.batches_per_epoch
    models = assemble(cfg, dist)
    state = _build_state(cfg, dist, models, steps_per_epoch, output.name)
    state.fingerprint = fingerprint

    # ---- resume ----------------------------------------------------------------------------
    if resume_from is not None:
        checkpoint.load(resume_from, state, dist.device)
    start_epoch, start_batch = state.epoch, state.batch_in_epoch
    global_step = state.global_step
    last_step = cfg.total_step if cfg.max_steps <= 0 else min(cfg.total_step, cfg.max_steps)

    # ---- loop ------------------------------------------------------------------------------
    monitor = TrainingMonitor(output=output, rank=dist.rank, frequent=cfg.frequent, total_step=last_step,
                              batch_size=cfg.batch_size, world_size=dist.world_size, start_step=global_step,
                              grad_scaler=state.scaler, progress_bar=cfg.progress_bar)  # it reads is_enabled()
    val_sets = _load_val_sets(cfg, dist)
    for epoch in range(start_epoch, cfg.num_epoch):
        if global_step >= last_step:  # e.g. resumed from the set a max_steps run saved at its end
            break
        loader.set_epoch(epoch, start_batch)
        batch_in_epoch = start_batch
        for batch_in_epoch, batch in enumerate(loader, start=start_batch + 1):
            global_step += 1
            stepped = _train_step(cfg, models.step, state, batch, global_step)
            if stepped is None:  # a non-finite loss skipped (nonfinite_loss = 'skip')
                continue
            out, grad_norm = stepped
            monitor.update(global_step, epoch=epoch, loss=out["loss"].detach(), lr=state.scheduler.get_last_lr()[0],
                           grad_norm=grad_norm, scalars={k: v for k, v in out.items() if k != "loss" and v.dim() == 0},
                           histograms={k: v for k, v in out.items() if v.dim() == 1})  # the head's statistics
            if global_step % cfg.frequent == 0 or global_step == last_step:
                stop.check(monitor.window_loss, global_step, dist.device)  # one small collective per window
            if cfg.verbose > 0 and global_step % cfg.verbose == 0:
                _verify(val_sets, models.student, monitor, global_step, dist)
            if stop.requested or (cfg.save_every_steps > 0 and global_step % cfg.save_every_steps == 0):
                checkpoint.save(state.at(epoch, global_step, batch_in_epoch), output, cfg.keep_checkpoints)
            if stop.requested or global_step >= last_step:
                break
        start_batch = 0
        if batch_in_epoch >= steps_per_epoch:  # the epoch is complete (also when it ends the run)
            if cfg.save_all_states:
                checkpoint.save(state.at(epoch + 1, global_step, 0), output, cfg.keep_checkpoints)
            if dist.is_main:
                checkpoint.save_model(models.student, output)
        if stop.requested or global_step >= last_step:
            break

    # ---- save ------------------------------------------------------------------------------
    if not stop.requested:
        if cfg.verbose <= 0 or global_step % cfg.verbose != 0:
            _verify(val_sets, models.student, monitor, global_step, dist)  # the host skips this final check
        if dist.is_main:
            checkpoint.save_model(models.student, output)
    else:
        logger.info("stopped by signal at global step %d; resume with --set resume=True", global_step)
    monitor.close()
    result = TrainResult(output, global_step, stop.requested)
    if dist.is_main:
        for line in run_summary(cfg, result, time.monotonic() - started, monitor):
            logger.info(line)
    return result


# ------------------------------------------------------------------------------------------------
# helpers

@contextlib.contextmanager
def _output_claimed(cfg: RunConfig, dist: distributed.DistInfo,
                    fingerprint: Dict[str, Any]) -> Iterator[Optional[Path]]:
    """Claim `output` and decide the resume point (rank 0, under the lock), then open training.log. A refusal
    (another kind of folder, in use, "already holds a run", a resume that does not fit) leaves the folder as
    it was and is raised on every rank; only then does the log start, with the decision's messages (every
    later error or interruption is written to it too). Yields the checkpoint set to resume from, or None."""
    output = Path(cfg.output)
    with contextlib.ExitStack() as held:
        def claim() -> Optional[Path]:
            decided: List[Optional[Path]] = []
            held.enter_context(claim_output(output, "train", resume=cfg.resume, overwrite=cfg.overwrite,
                                            check=lambda _: decided.append(checkpoint.resume_point(
                                                output, fingerprint, cfg.resume, cfg.resume_allow_changes,
                                                content=lambda: _content_identity(cfg)))))
            return decided[0]

        with held_log_records() as records:
            resume_from = distributed.on_main(claim)
        setup_logging(output, dist.rank, replay=records)
        with errors_logged():
            yield resume_from


def _seed_everything(seed: int) -> None:
    """Same seed on every rank, so every rank builds identical initial weights (as the host does)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def _build_loader(cfg: RunConfig, dist: distributed.DistInfo, fingerprint: Dict[str, Any]) -> Any:
    """This rank's `FaceLoader` over `rec`, with each sample's teacher row when `teacher_cache` is set (the
    cache checked against this run's teacher weights, data and embedding size); the data, the teacher
    weights and the cache go into the run's `fingerprint` by content (sha256)."""
    dataset = build_dataset(cfg.rec, cfg.num_classes, cfg.seed, uint8=True)  # the loader normalises
    mismatch = dataset.check_num_image(cfg.num_image, cfg.num_image_mismatch)  # stops unless 'warn'
    if mismatch and dist.is_main:
        logger.warning(mismatch)
    fingerprint.update(distributed.on_main(lambda: _content_identity(cfg, dataset)))
    if cfg.teacher_cache is not None:
        spec = TeacherSpec(cfg.teacher_network, cfg.teacher_weights, cfg.embedding_size)
        cache = open_teacher_cache(cfg.teacher_cache, run_identity(spec, dataset, cfg.rec))
        logger.info("teacher embeddings read from %s (%s rows, %s teacher, stored %s); the teacher is not loaded",
                    cache.folder, cache.manifest["rows_written"], cache.manifest["teacher"]["precision"],
                    cache.manifest["dtype"])
        dataset = CachedTeacherDataset(dataset, cache)
    if cfg.dali and dist.is_main:
        logger.info("dali = True: DALI is not used; our DataLoader reads %s in its place", cfg.rec)
    return build_dataloader(dataset, cfg.batch_size, dist.rank, dist.world_size, cfg.seed,
                            cfg.num_workers, dist.device)


def _content_identity(cfg: RunConfig, dataset: Optional[Any] = None) -> Dict[str, Optional[str]]:
    """The data, the teacher weights and the teacher cache by content (sha256): saved with every set,
    compared when resuming (before the log starts, so the dataset is built here once more)."""
    teacher = TeacherSpec(cfg.teacher_network, cfg.teacher_weights, cfg.embedding_size) if cfg.teacher_weights else None
    dataset = dataset if dataset is not None else build_dataset(cfg.rec, cfg.num_classes, cfg.seed, uint8=True)
    return content_identity(dataset, cfg.rec, teacher=teacher, cache=cfg.teacher_cache)


def _build_state(cfg: RunConfig, dist: distributed.DistInfo, models: Models, steps_per_epoch: int,
                 run_name: str) -> checkpoint.TrainState:
    """The optimizer (host groups), the schedule (in optimizer steps), the loss scaler, as a `TrainState`."""
    lr = scaled_lr(cfg.lr, cfg.total_batch_size, cfg.lr_scale_batch)
    optimizer = build_optimizer(cfg.optimizer, host_param_groups(models.student, models.head), lr=lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    acc = cfg.gradient_acc  # the scheduler counts optimizer steps, not iterations
    scheduler = build_scheduler(optimizer, cfg.lr_schedule, warmup_steps=cfg.warmup_step // acc,
                                total_steps=cfg.total_step // acc, steps_per_epoch=steps_per_epoch // acc,
                                power=cfg.lr_power, drop_epochs=cfg.lr_steps)
    scaler = torch.amp.GradScaler(dist.device.type, growth_interval=100,
                                  enabled=cfg.fp16 and cfg.amp_dtype == "fp16" and dist.device.type == "cuda")
    return checkpoint.TrainState(models.student, models.head, optimizer, scheduler, scaler, rank=dist.rank,
                                 world_size=dist.world_size, num_classes=cfg.num_classes,
                                 steps_per_epoch=steps_per_epoch, run_name=run_name)


def _train_step(cfg: RunConfig, step: DistillStep, state: checkpoint.TrainState, batch: Any,
                global_step: int) -> Optional[Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]]:
    """Forward and backward of one batch, then the optimizer step when the accumulation is complete: the
    outputs and the clipped gradient norm (None between optimizer steps), or None when `nonfinite_loss =
    'skip'` dropped the batch."""
    sync_grads = global_step % cfg.gradient_acc == 0
    with contextlib.nullcontext() if sync_grads else step.student.no_sync():  # DDP: sum locally until the step
        out = step(batch.image, batch.label, getattr(batch, "teacher", None))
        loss = out["loss"]
        if cfg.nonfinite_loss == "skip" and not torch.isfinite(loss).item():  # opt-in host sync
            logger.warning("step %d: loss is %s, skipping this batch", global_step, loss.item())
            state.optimizer.zero_grad(set_to_none=True)
            return None
        state.scaler.scale(loss / cfg.gradient_acc).backward()
    if not sync_grads:
        return out, None
    grad_norm = optimizer_step(state.optimizer, state.scaler, state.student, cfg.clip_grad_norm)
    state.scheduler.step()
    return out, grad_norm


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    student: torch.nn.Module, max_norm: float) -> Optional[torch.Tensor]:
    """Unscale, clip the backbone only (host behaviour), step, update the scale, clear grads."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm) if max_norm > 0 else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _load_val_sets(cfg: RunConfig, dist: distributed.DistInfo) -> List[VerificationSet]:
    """Rank 0 loads `<rec>/<name>.bin` for each val target; a listed but missing file is an error."""
    if not dist.is_main or not cfg.val_targets:
        return []
    folder = Path(cfg.rec)
    missing = [n for n in cfg.val_targets if not (folder / f"{n}.bin").is_file()]
    if missing:
        raise InputNotFoundError(f"val_targets {missing} not found as {folder}/<name>.bin (arcface_torch "
                                "skips them silently); copy the .bin files there or remove them from "
                                "val_targets")
    return [VerificationSet.load(folder / f"{name}.bin") for name in cfg.val_targets]


def _verify(val_sets: List[VerificationSet], student: torch.nn.Module, monitor: TrainingMonitor,
            global_step: int, dist: distributed.DistInfo) -> None:
    """Rank 0 evaluates every set; the others wait on a long-timeout barrier (no NCCL timeout)."""
    if dist.is_main and val_sets:
        accuracies = {}
        for vset in val_sets:
            result = evaluate_backbone(student, vset, batch_size=64)
            accuracies[vset.name] = result["accuracy"]
            logger.info("[%s][%d]XNorm: %f", vset.name, global_step, result["xnorm"])
            logger.info("[%s][%d]Accuracy-Flip: %1.5f+-%1.5f", vset.name, global_step,
                        result["accuracy"], result["std"])
        monitor.log_verification(global_step, accuracies)
    distributed.wait_for_main()


class StopRequest:
    """SIGTERM or Ctrl-C asks for a clean stop; a second Ctrl-C aborts; a non-finite loss stops. Ranks may
    get a signal at different steps, so the decision is all-reduced once per logging window and every rank
    stops (and saves) at the same step. As a context manager it installs its handlers, restoring the old on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signalled = False
        self.requested = False
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signalled:
            raise KeyboardInterrupt("second Ctrl-C: aborted without saving")
        if signum == signal.SIGINT:
            logger.warning("Ctrl-C: saving a checkpoint at the next logging window (press again to abort)")
        self.signalled = True

    def check(self, window_loss: Any, global_step: int, device: torch.device) -> None:
        """All ranks agree on a stop: a signal on any rank, or a non-finite `window_loss` (the loss
        summed over the logging window, a device tensor or 0.0)."""
        window_loss = torch.as_tensor(window_loss, dtype=torch.float32, device=device)
        flags = torch.stack([torch.tensor(float(self.signalled), device=device),
                             (~torch.isfinite(window_loss)).float()])
        flags = distributed.all_reduce(flags, distributed.dist.ReduceOp.MAX).tolist()
        if flags[1]:
            raise NonFiniteLossError(
                f"loss became NaN/Inf before global step {global_step}; the last complete checkpoint "
                "set is kept. Lower lr (e.g. 0.1 -> 0.03), check the labels (0 <= label < num_classes) "
                "and the data, or set nonfinite_loss='skip' to drop such batches")
        self.requested = bool(flags[0])


