"""arcface_torch's training loop, plus distillation (what `adadistill train CONFIG` runs).

One process on CPU (gloo) or one GPU (nccl) with `adadistill train`, or many with
`torchrun --nproc_per_node=N -m insightface_adadistill train CONFIG`: the same code runs in both.
Read `train()` top to bottom: config -> distributed -> seed and logging -> data -> models ->
optimizer and schedule -> resume -> loop -> save. Everything else is a named helper below it.
"""
from __future__ import annotations

import inspect
import logging
import os
import random
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from insightface_adadistill import distributed
from insightface_adadistill.backbones import get_model
from insightface_adadistill.config import format_config
from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.data.loader import build_dataloader
from insightface_adadistill.evaluation.verification import VerificationSet, evaluate_backbone
from insightface_adadistill.heads import build_head, build_margin_loss
from insightface_adadistill.teacher import build_teacher, check_embedding_sizes, load_teacher_classifier
from insightface_adadistill.training import checkpoint as ckpt
from insightface_adadistill.training.monitor import TrainingMonitor, setup_logging
from insightface_adadistill.training.optim import build_optimizer, trainable_param_groups
from insightface_adadistill.training.schedule import build_scheduler, scaled_lr
from insightface_adadistill.training.step import DistillStep

logger = logging.getLogger("insightface_adadistill.train")
_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the last complete checkpoint set is left untouched."""


def train(cfg: Any, dist: distributed.DistInfo) -> Path:
    """Run one training job described by a validated config; returns the output folder."""
    # ---- seed and logging ------------------------------------------------------------------
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(cfg)
    resume_from = ckpt.check_output_dir(output, fingerprint, cfg.resume)
    _seed_everything(cfg.seed)
    torch.backends.cudnn.benchmark = True  # fixed 112x112 input: autotuned kernels pay off (host does it)
    setup_logging(output, dist.rank)
    for line in format_config(cfg):
        logger.info(line)

    # ---- data ------------------------------------------------------------------------------
    dataset = build_dataset(cfg.rec, cfg.num_classes, cfg.seed)
    loader = build_dataloader(dataset, cfg.batch_size, dist.rank, dist.world_size, cfg.seed,
                              cfg.num_workers, dist.device)
    steps_per_epoch = loader.batches_per_epoch
    if dist.is_main and len(dataset) != cfg.num_image:
        logger.warning("num_image=%d but the data holds %d images: step counts (warm-up, poly decay, "
                       "ETA) follow num_image as in arcface_torch", cfg.num_image, len(dataset))

    # ---- models ----------------------------------------------------------------------------
    student = get_model(cfg.network, dropout=0.0, fp16=cfg.fp16, num_features=cfg.embedding_size,
                        amp_dtype=cfg.amp_dtype).to(dist.device)
    margin_loss = build_margin_loss(cfg.margin_list, cfg.margin_grad, cfg.interclass_filtering_threshold)
    head = build_head(cfg.distill, margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate,
                      alpha=cfg.distill_alpha, feature_kd_weight=cfg.feature_kd_weight,
                      teacher_classifier=_teacher_classifier(cfg), seed=cfg.seed).to(dist.device)
    teacher = _build_teacher(cfg, dist.device) if head.needs_teacher else None
    ddp_student = wrap_ddp(student, dist)
    step_fn = DistillStep(ddp_student, head, teacher)

    # ---- optimizer and schedule -------------------------------------------------------------
    lr = scaled_lr(cfg.lr, cfg.total_batch_size, cfg.lr_scale_batch)
    optimizer = build_optimizer(cfg.optimizer, trainable_param_groups(student, head), lr=lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    acc = cfg.gradient_acc  # the scheduler counts optimizer steps, not iterations
    scheduler = build_scheduler(optimizer, cfg.lr_schedule, warmup_steps=cfg.warmup_step // acc,
                                total_steps=cfg.total_step // acc, steps_per_epoch=steps_per_epoch // acc,
                                power=cfg.lr_power, drop_epochs=cfg.lr_steps)
    scaler = torch.amp.GradScaler(dist.device.type, growth_interval=100,
                                  enabled=cfg.fp16 and cfg.amp_dtype == "fp16" and dist.device.type == "cuda")

    # ---- resume ----------------------------------------------------------------------------
    start_epoch, global_step, start_batch = 0, 0, 0
    if resume_from is not None:
        state = ckpt.load_checkpoint_set(resume_from, dist.rank, dist.world_size, map_location=dist.device)
        ckpt.restore_checkpoint(state, backbone=student, head=head, optimizer=optimizer,
                                lr_scheduler=scheduler, grad_scaler=scaler)
        head.load_sampler_state((state["head_extra"] or {}).get("sampler"))
        ckpt.restore_rng_state(state["rng_state"])
        start_epoch, global_step, start_batch = state["epoch"], state["global_step"], state["batch_in_epoch"]
        if start_batch >= steps_per_epoch:  # saved on an epoch's last batch: that epoch is done
            start_epoch, start_batch = start_epoch + 1, 0
        logger.info("resumed from %s: epoch %d, batch %d, global step %d", resume_from, start_epoch,
                    start_batch, global_step)
    last_step = cfg.total_step if cfg.max_steps <= 0 else min(cfg.total_step, cfg.max_steps)

    # ---- loop ------------------------------------------------------------------------------
    monitor = TrainingMonitor(output=output, rank=dist.rank, frequent=cfg.frequent, total_step=last_step,
                              batch_size=cfg.batch_size, world_size=dist.world_size, start_step=global_step,
                              grad_scaler=scaler if scaler.is_enabled() else None,
                              progress_bar=cfg.progress_bar)
    val_sets = _load_val_sets(cfg, dist)
    stop = _StopRequest()
    saver = _Saver(cfg, dist, output, fingerprint, student, head, optimizer, scheduler, scaler)
    window_loss = torch.zeros((), device=dist.device)
    for epoch in range(start_epoch, cfg.num_epoch):
        loader.set_epoch(epoch, start_batch)
        for batch_in_epoch, batch in enumerate(loader, start=start_batch + 1):
            global_step += 1
            images, labels = batch.image, batch.label
            sync_grads = global_step % acc == 0
            with _maybe_no_sync(ddp_student, sync_grads):
                out = step_fn(images, labels)
                loss = out["loss"]
                if cfg.nonfinite_loss == "skip" and not torch.isfinite(loss).item():  # opt-in host sync
                    logger.warning("step %d: loss is %s, skipping this batch", global_step, loss.item())
                    optimizer.zero_grad(set_to_none=True)
                    continue
                scaler.scale(loss / acc).backward()
            grad_norm = None
            if sync_grads:
                grad_norm = optimizer_step(optimizer, scaler, student, cfg.clip_grad_norm)
                scheduler.step()
            window_loss += loss.detach()
            monitor.update(global_step, epoch=epoch, loss=loss.detach(), lr=scheduler.get_last_lr()[0],
                           grad_norm=grad_norm, **_stats_for_monitor(out))
            if global_step % cfg.frequent == 0 or global_step == last_step:
                stop.check(window_loss, global_step)  # one small collective per logging window
                window_loss.zero_()
            if cfg.verbose > 0 and global_step % cfg.verbose == 0:
                _verify(val_sets, student, monitor, global_step, dist)
            if stop.requested or (cfg.save_every_steps > 0 and global_step % cfg.save_every_steps == 0):
                saver.save(epoch, global_step, batch_in_epoch)
            if stop.requested or global_step >= last_step:
                break
        start_batch = 0
        if stop.requested or global_step >= last_step:
            break
        if cfg.save_all_states:
            saver.save(epoch + 1, global_step, 0)
        if dist.is_main:
            ckpt.save_model(student, output)

    # ---- save ------------------------------------------------------------------------------
    if not stop.requested:
        if cfg.verbose <= 0 or global_step % cfg.verbose != 0:
            _verify(val_sets, student, monitor, global_step, dist)  # the host skips this final check
        if dist.is_main:
            ckpt.save_model(student, output)
            logger.info("finished: %s", output / "model.pt")
    else:
        logger.info("stopped by signal at global step %d; resume with --set resume=True", global_step)
    monitor.close()
    return output


# ------------------------------------------------------------------------------------------------
# helpers

def _fingerprint(cfg: Any) -> Dict[str, Any]:
    """What must match for a resume: the run's identity, not its tunable settings."""
    keys = ("network", "num_classes", "embedding_size", "distill", "teacher_network")
    return {"config_name": Path(str(cfg.output)).name, **{k: cfg[k] for k in keys}}


def _seed_everything(seed: int) -> None:
    """Same seed on every rank, so every rank builds identical initial weights (as the host does)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def _build_teacher(cfg: Any, device: torch.device) -> torch.nn.Module:
    """The frozen teacher from `teacher_network`/`teacher_weights`; never a random one."""
    teacher = build_teacher(cfg.teacher_network, cfg.teacher_weights, cfg.embedding_size, device,
                            dtype=cfg.teacher_dtype, channels_last=cfg.teacher_channels_last)
    check_embedding_sizes(teacher(torch.zeros(2, 3, 112, 112, device=device)).shape[1], cfg.embedding_size)
    return teacher


def _teacher_classifier(cfg: Any) -> Optional[torch.Tensor]:
    if cfg.distill != "arcdistill":
        return None
    return load_teacher_classifier(cfg.teacher_classifier, cfg.num_classes, cfg.embedding_size)


def wrap_ddp(student: torch.nn.Module, dist: distributed.DistInfo) -> torch.nn.Module:
    """DDP over the student only; gradients are SUMMED across ranks (see distributed.ddp_sum_hook).

    The heads' all-gather already returns each rank the true gradient of the global-mean loss for
    its own embeddings, so the backbone gradients must be added, not averaged. BN buffers are not
    broadcast (host behaviour: rank 0's statistics are the ones saved).
    """
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    # torch >= 2.13 renamed broadcast_buffers to forward_sync_buffers (deprecation warning otherwise)
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS
                      else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(student, device_ids=device_ids, bucket_cap_mb=16, **no_buffer_sync)
    ddp.register_comm_hook(None, distributed.ddp_sum_hook)
    return ddp


class _maybe_no_sync:
    """DDP's `no_sync` on accumulation steps that do not end in an optimizer step."""

    def __init__(self, ddp: torch.nn.Module, sync: bool) -> None:
        self.context = None if sync else ddp.no_sync()

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    student: torch.nn.Module, max_norm: float) -> Optional[torch.Tensor]:
    """Unscale, clip the backbone only (host behaviour), step, update the scale, clear grads."""
    scaler.unscale_(optimizer)
    grad_norm = None
    if max_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _stats_for_monitor(out: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Head statistics as TensorBoard tags: 0-dim ones as scalars, per-sample ones as histograms."""
    scalars = {f"distill/{k}": v for k, v in out.items() if k != "loss" and v.dim() == 0}
    histograms = {f"distill/{k}": v for k, v in out.items() if v.dim() == 1}
    return {"scalars": scalars, "histograms": histograms}


def _load_val_sets(cfg: Any, dist: distributed.DistInfo) -> List[VerificationSet]:
    """Rank 0 loads `<rec>/<name>.bin` for each val target; a listed but missing file is an error."""
    if not dist.is_main or not cfg.val_targets:
        return []
    folder = Path(cfg.rec)
    missing = [n for n in cfg.val_targets if not (folder / f"{n}.bin").is_file()]
    if missing:
        raise FileNotFoundError(f"val_targets {missing} not found as {folder}/<name>.bin (arcface_torch "
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


class _StopRequest:
    """SIGTERM asks for a clean stop; a non-finite loss stops with a diagnostic.

    Ranks may receive the signal at different steps, so the decision is all-reduced once per
    logging window: every rank then stops (and saves) at the same global step.
    """

    def __init__(self) -> None:
        self.signalled = False
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def check(self, window_loss: torch.Tensor, global_step: int) -> None:
        flags = torch.stack([torch.tensor(float(self.signalled), device=window_loss.device),
                             (~torch.isfinite(window_loss)).float()])
        flags = distributed.all_reduce(flags, distributed.dist.ReduceOp.MAX).tolist()
        if flags[1]:
            raise NonFiniteLossError(
                f"loss became NaN/Inf before global step {global_step}; the last complete checkpoint "
                "set is kept. Lower lr (e.g. 0.1 -> 0.03), check the labels (0 <= label < num_classes) "
                "and the data, or set nonfinite_loss='skip' to drop such batches")
        self.requested = bool(flags[0])


class _Saver:
    """Writes a checkpoint set (every rank) with the run's fingerprint; `model.pt` stays rank 0's."""

    def __init__(self, cfg: Any, dist: distributed.DistInfo, output: Path, fingerprint: Dict[str, Any],
                 student: torch.nn.Module, head: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler) -> None:
        self.cfg, self.dist, self.output, self.fingerprint = cfg, dist, output, fingerprint
        self.student, self.head, self.optimizer, self.scheduler, self.scaler = (
            student, head, optimizer, scheduler, scaler)

    def save(self, epoch: int, global_step: int, batch_in_epoch: int) -> None:
        state = ckpt.make_checkpoint(
            epoch=epoch, global_step=global_step, batch_in_epoch=batch_in_epoch, backbone=self.student,
            head=self.head, optimizer=self.optimizer, lr_scheduler=self.scheduler,
            grad_scaler=self.scaler if self.scaler.is_enabled() else None, rank=self.dist.rank,
            world_size=self.dist.world_size, num_classes=self.cfg.num_classes,
            config_name=self.fingerprint["config_name"],
            head_extra={"sampler": self.head.sampler_state()})
        ckpt.save_checkpoint_set(self.output, state, barrier=distributed.barrier,
                                 keep=self.cfg.keep_checkpoints, fingerprint=self.fingerprint)
