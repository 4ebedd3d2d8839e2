"""`TrainState`: everything one rank needs to continue a run bit for bit, as one rank file of
tensors and plain containers (so it loads with `weights_only=True`)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from insightface_adadistill.backbones.loading import strip_wrapper_prefixes, unwrap
from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.errors import UserError

FORMAT_VERSION = 1
HEAD_GROUP = 1  # optimizer param group holding the per-class head parameters (see optim.py)
_STORABLE = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device)


class CheckpointError(UserError, ValueError):
    """A checkpoint set or file cannot be used for this run; the message names it and the fix."""


def tree_map(leaf: Callable[[Any, str], Any], obj: Any, where: str = "", sequence: Optional[type] = None) -> Any:
    """`obj` rebuilt with `leaf(value, where)` applied to each value that is not a dict, list or tuple
    (which keep their type unless `sequence` is given); keys must be str or int, as `weights_only` needs."""
    if isinstance(obj, Mapping):
        for key in obj:
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
        return {k: tree_map(leaf, v, f"{where}[{k!r}]", sequence) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return (sequence or type(obj))([tree_map(leaf, v, f"{where}[{i}]", sequence) for i, v in enumerate(obj)])
    return leaf(obj, where)


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor detached and on the CPU."""
    return tree_map(lambda v, _: v.detach().cpu() if isinstance(v, torch.Tensor) else v, obj)


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in `obj`: the size of its file, give or take a few KiB."""
    sizes: List[int] = []
    tree_map(lambda v, _: sizes.append(v.numel() * v.element_size()) if isinstance(v, torch.Tensor) else 0, obj)
    return sum(sizes)


def check_storable(obj: Any, where: str) -> None:
    """Fail at save time, naming the entry, rather than at resume time when weights_only refuses it."""
    def check(value: Any, at: str) -> None:
        if not isinstance(value, _STORABLE):
            raise TypeError(f"{at} is a {type(value).__name__}, which weights_only loading refuses; "
                            "store tensors, numbers, strings, lists or dicts instead")
    tree_map(check, obj, where)


def backbone_state(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """The backbone's state_dict as the host saves `model.pt`: CPU, fp32, no wrapper prefixes."""
    state = strip_wrapper_prefixes(unwrap(backbone).state_dict())
    return {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}


def sharded_keys(head_state: Mapping[str, Any], num_local: int) -> List[str]:
    """Head entries with one row per local class: the ones re-sharded when the world size changes."""
    return [k for k, v in head_state.items() if isinstance(v, torch.Tensor) and v.dim() and len(v) == num_local]


@dataclass
class TrainState:
    """One rank's training objects and position (`epoch` completed epochs, as the host counts); `fingerprint`
    (the config snapshot and content identities) goes into every set's marker."""
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
    fingerprint: Dict[str, Any] = field(default_factory=dict)

    def at(self, epoch: int, global_step: int, batch_in_epoch: int) -> "TrainState":
        """Set the position; an epoch's last batch is recorded as the next epoch's start, as the host does."""
        if self.steps_per_epoch and batch_in_epoch >= self.steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        self.epoch, self.global_step, self.batch_in_epoch = int(epoch), int(global_step), int(batch_in_epoch)
        return self

    def state_dict(self) -> Dict[str, Any]:
        """This rank's checkpoint dict, all tensors on the CPU (they may share storage with the model)."""
        head_state = to_cpu(unwrap(self.head).state_dict())
        # gradients accumulated since the last optimizer step (this rank's sums under `no_sync`): a save
        # between two steps keeps them, so the resumed run applies the same update
        grads = [[None if p.grad is None else p.grad.detach().cpu() for p in group["params"]]
                 for group in self.optimizer.param_groups]
        checkpoint = {
            "epoch": int(self.epoch), "global_step": int(self.global_step),
            "state_dict_backbone": backbone_state(self.student), "state_dict_softmax_fc": head_state,
            "state_optimizer": to_cpu(self.optimizer.state_dict()), "state_lr_scheduler": self.scheduler.state_dict(),
            "state_grad_scaler": self.scaler.state_dict(),  # {} when disabled (fp32, bf16, CPU)
            "rng_state": capture_rng_state(), "batch_in_epoch": int(self.batch_in_epoch), "rank": int(self.rank),
            "world_size": int(self.world_size), "num_classes": int(self.num_classes), "config_name": str(self.run_name),
            "head_extra": {"sampler": to_cpu(self.head.sampler_state())},
            "head_sharded_keys": sharded_keys(head_state,
                                              shard_classes(self.num_classes, self.rank, self.world_size)[1]),
            "accumulated_grads": grads if any(g is not None for group in grads for g in group) else None,
            "format_version": FORMAT_VERSION,
        }
        check_storable(checkpoint, "checkpoint")
        return checkpoint

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore every state and the position (the keys the host does not write may be missing)."""
        unwrap(self.student).load_state_dict(checkpoint["state_dict_backbone"], strict=True)
        unwrap(self.head).load_state_dict(checkpoint["state_dict_softmax_fc"], strict=True)
        self.optimizer.load_state_dict(checkpoint["state_optimizer"])  # first: the scheduler overwrote the LRs
        self.scheduler.load_state_dict(checkpoint["state_lr_scheduler"])
        if checkpoint.get("state_grad_scaler"):
            self.scaler.load_state_dict(checkpoint["state_grad_scaler"])
        self.head.load_sampler_state((checkpoint.get("head_extra") or {}).get("sampler"))
        restore_rng_state(checkpoint.get("rng_state"))
        for group, grads in zip(self.optimizer.param_groups, checkpoint.get("accumulated_grads") or []):
            for param, grad in zip(group["params"], grads):
                param.grad = None if grad is None else grad.to(param.device, param.dtype).clone()
        self.at(checkpoint["epoch"], checkpoint["global_step"], checkpoint.get("batch_in_epoch", 0))


def capture_rng_state() -> Dict[str, Any]:
    """torch, CUDA (once in use: asking creates a context), numpy and python RNG states, as tensors."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": {
        "bit_generator": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
        "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)}, "python": {
        "version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss_next": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Optional[Mapping[str, Any]]) -> None:
    """Inverse of `capture_rng_state`; `None` (after a world-size change) does nothing."""
    if state is None:
        return
    torch.set_rng_state(state["torch"].cpu())  # a map_location="cuda" load moves it to the GPU
    numpy, python = state["numpy"], state["python"]
    np.random.set_state((numpy["bit_generator"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
