"""Learning-rate schedules, stepped once per optimizer step (docs/training.md).

Both are closed-form functions of the scheduler counter `k` (`last_epoch`, the `step()` calls so far),
so a restored scheduler continues exactly; neither passes the `verbose=` that torch 2.7 removed (the
host's construction fails on current torch).
"""
from __future__ import annotations

from typing import List, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from insightface_adadistill.config.defaults import SCHEDULE_KINDS
from insightface_adadistill.errors import SettingError


def poly_warmup_factor(k: int, warmup_steps: int, total_steps: int, power: float) -> float:
    """LR multiplier of the host's `PolynomialLRWarmup` at scheduler counter `k`: 1 at k = 0 (the host
    runs the first iteration at the full base LR even with warm-up), k / w up to w, then
    (1 - (k - w) / (T - w)) ** power down to 0 at T, and 0 after. A negative `warmup_steps` means no
    warm-up, as in the host (its 3millions config uses -1)."""
    warmup = max(warmup_steps, 0)
    if k == 0:
        return 1.0
    if k <= warmup:
        return k / warmup
    return max(1.0 - (k - warmup) / (total_steps - warmup), 0.0) ** power


class PolynomialWarmupLR(LRScheduler):
    """Linear warm-up then polynomial decay to 0 at `total_steps`: `power=1` is current arcface_torch,
    `power=2` the historical `PolyScheduler` of the published model-zoo runs. For w=3, T=10, base 0.1:
    0.1, .0333, .0667, .1, .0857, .0714, ..., .0143, 0, 0 (verified on the host)."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 power: float = 1.0) -> None:
        if total_steps <= max(warmup_steps, 0):
            raise SettingError(f"total_steps={total_steps} must exceed warmup_steps={warmup_steps}: the decay "
                               "phase would be empty. Lower warmup_epoch or raise num_epoch in the config")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.power = float(power)
        super().__init__(optimizer)

    def get_lr(self) -> List[float]:
        factor = poly_warmup_factor(self.last_epoch, self.warmup_steps, self.total_steps, self.power)
        return [base * factor for base in self.base_lrs]


class EpochStepLR(LRScheduler):
    """Multiply the LR by `gamma` at the start of each 1-based epoch in `drop_epochs` (stepped per optimizer
    step like `PolynomialWarmupLR`); the AdaDistill paper drops at epochs 8, 14, 20, 25 of 26."""

    def __init__(self, optimizer: Optimizer, steps_per_epoch: int, drop_epochs: Sequence[int],
                 gamma: float = 0.1) -> None:
        if steps_per_epoch < 1:
            raise SettingError(f"steps_per_epoch={steps_per_epoch} must be >= 1; check num_image "
                             "and batch_size in the config")
        bad = [d for d in drop_epochs if not isinstance(d, int) or d < 1]
        if bad:
            raise SettingError(f"lr_steps={list(drop_epochs)}: {bad} are not 1-based epoch numbers; "
                             "write e.g. lr_steps=[8, 14, 20, 25]")
        self.steps_per_epoch = int(steps_per_epoch)
        self.drop_epochs = sorted(drop_epochs)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def get_lr(self) -> List[float]:
        """Counter k is the LR of global iteration k + 1, in 1-based epoch k // steps_per_epoch + 1."""
        epoch = self.last_epoch // self.steps_per_epoch + 1
        return [base * self.gamma ** sum(d <= epoch for d in self.drop_epochs) for base in self.base_lrs]


def build_scheduler(optimizer: Optimizer, kind: str, *, warmup_steps: int = 0, total_steps: int = 0,
                    steps_per_epoch: int = 0, power: float = 1.0,
                    drop_epochs: Sequence[int] = ()) -> LRScheduler:
    """Build the `lr_schedule` named `kind` ('poly' or 'step'); unused arguments are ignored."""
    if kind == "poly":
        return PolynomialWarmupLR(optimizer, warmup_steps, total_steps, power)
    if kind == "step":
        return EpochStepLR(optimizer, steps_per_epoch, drop_epochs)
    raise SettingError(f"unknown lr_schedule {kind!r}; use one of {', '.join(SCHEDULE_KINDS)}")


def scaled_lr(lr: float, total_batch_size: int, lr_scale_batch: int | None) -> float:
    """Linear LR scaling: lr * total_batch_size / lr_scale_batch, or `lr` when not configured (arcface_torch
    never scales; AdaDistill states lr 0.1 for a global batch of 512, so its recipe sets 512)."""
    if lr_scale_batch is None:
        return float(lr)
    if lr_scale_batch <= 0 or total_batch_size <= 0:
        raise SettingError(f"lr_scale_batch={lr_scale_batch} and total_batch_size={total_batch_size} "
                         "must be positive; set lr_scale_batch=None to disable LR scaling")
    return float(lr) * total_batch_size / lr_scale_batch
