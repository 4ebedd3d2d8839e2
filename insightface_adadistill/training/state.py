"""`TrainState`: everything one rank needs to continue a run bit for bit, as one rank file.

The student, the head (its class shard and its negative-centre sampler), the optimizer, the
scheduler, the loss scaler, the RNG states, the position in the data, and a gradient that is
still being accumulated. `state_dict()` gives the arcface_torch-compatible rank file described in
`checkpoint.py`; `load_state_dict()` restores it, from our sets or from a converted host file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from insightface_adadistill.backbones.loading import unwrap
from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.training.checkpoint import FORMAT_VERSION, backbone_state, check_storable, to_cpu
from insightface_adadistill.training.optim import upgrade_group_layout
from insightface_adadistill.training.rng import capture_rng_state, restore_rng_state


@dataclass
class TrainState:
    """One rank's training objects and position.

    Attributes:
        epoch: completed epochs (host meaning: a resume starts epoch index `epoch`).
        global_step: iterations done (arcface_torch's `global_step`).
        batch_in_epoch: batches of epoch index `epoch` already trained (0 at an epoch end).
        steps_per_epoch: batches per epoch on this world size; a position on an epoch's last
            batch is recorded as the next epoch's start, as the host writes it.
    """

    student: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    rank: int = 0
    world_size: int = 1
    num_classes: int = 0
    steps_per_epoch: int = 0
    run_name: str = ""
    epoch: int = 0
    global_step: int = 0
    batch_in_epoch: int = 0

    def at(self, epoch: int, global_step: int, batch_in_epoch: int) -> "TrainState":
        """Set the position (before a save); returns self."""
        if self.steps_per_epoch and batch_in_epoch >= self.steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        self.epoch, self.global_step, self.batch_in_epoch = epoch, global_step, batch_in_epoch
        return self

    def state_dict(self) -> Dict[str, Any]:
        """This rank's checkpoint dict, all tensors on the CPU (they may share storage with the model)."""
        head_state = {k: to_cpu(v) for k, v in unwrap(self.head).state_dict().items()}
        num_local = shard_classes(self.num_classes, self.rank, self.world_size)[1]
        checkpoint = {
            "epoch": int(self.epoch),
            "global_step": int(self.global_step),
            "state_dict_backbone": backbone_state(self.student),
            "state_dict_softmax_fc": head_state,
            "state_optimizer": to_cpu(self.optimizer.state_dict()),
            "state_lr_scheduler": self.scheduler.state_dict(),
            "state_grad_scaler": self.scaler.state_dict(),  # {} when disabled (fp32, bf16, CPU)
            "rng_state": capture_rng_state(),
            "batch_in_epoch": int(self.batch_in_epoch),
            "rank": int(self.rank),
            "world_size": int(self.world_size),
            "num_classes": int(self.num_classes),
            "config_name": str(self.run_name),
            "head_extra": {"sampler": to_cpu(self.head.sampler_state())},
            # tensors with one row per local class, re-sharded when the world size changes
            "head_sharded_keys": [k for k, v in head_state.items()
                                  if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == num_local],
            "accumulated_grads": _accumulated_grads(self.optimizer),
            "format_version": FORMAT_VERSION,
        }
        check_storable(checkpoint, "checkpoint")
        return checkpoint

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore every state and the position; keys the host does not write may be missing.

        The optimizer is loaded before the scheduler, whose construction overwrote the group LRs.
        An empty saved scaler state (fp32 run) leaves the scaler as it is.
        """
        unwrap(self.student).load_state_dict(checkpoint["state_dict_backbone"], strict=True)
        unwrap(self.head).load_state_dict(checkpoint["state_dict_softmax_fc"], strict=True)
        self.optimizer.load_state_dict(upgrade_group_layout(checkpoint["state_optimizer"], self.optimizer))
        self.scheduler.load_state_dict(checkpoint["state_lr_scheduler"])
        if checkpoint.get("state_grad_scaler"):
            self.scaler.load_state_dict(checkpoint["state_grad_scaler"])
        self.head.load_sampler_state((checkpoint.get("head_extra") or {}).get("sampler"))
        restore_rng_state(checkpoint.get("rng_state"))
        _restore_grads(self.optimizer, checkpoint.get("accumulated_grads"))
        self.epoch, self.global_step = int(checkpoint["epoch"]), int(checkpoint["global_step"])
        self.batch_in_epoch = int(checkpoint.get("batch_in_epoch", 0))

    def resume_position(self) -> Tuple[int, int]:
        """(epoch index, batches of it already trained) at which the loop continues."""
        if self.steps_per_epoch and self.batch_in_epoch >= self.steps_per_epoch:
            return self.epoch + 1, 0  # sets of older releases: saved on an epoch's last batch
        return self.epoch, self.batch_in_epoch


def _accumulated_grads(optimizer: torch.optim.Optimizer) -> Optional[List[List[Optional[torch.Tensor]]]]:
    """Gradients summed so far inside gradient accumulation, per group; None right after a step.

    A save between two optimizer steps keeps them, so the resumed run applies the same update.
    Under DDP's `no_sync` they are this rank's local sums, which the next synced backward reduces.
    """
    grads = [[None if p.grad is None else p.grad.detach().cpu() for p in group["params"]]
             for group in optimizer.param_groups]
    return grads if any(g is not None for group in grads for g in group) else None


def _restore_grads(optimizer: torch.optim.Optimizer, saved: Optional[List[List[Optional[torch.Tensor]]]]) -> None:
    for group, grads in zip(optimizer.param_groups, saved or []):
        for param, grad in zip(group["params"], grads):
            param.grad = None if grad is None else grad.to(param.device, param.dtype).clone()

