"""The optimizer, with arcface_torch's two parameter groups: [backbone, head] (as `train_v2.py`).

Two groups even when the head owns no parameters (AdaDistill's class centres are buffers; torch accepts
an empty group), so group 1 always means the per-class head state (re-sharding reads it) and standalone
and distillation runs' optimizer `state_dict`s agree.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from insightface_adadistill.config.defaults import OPTIMIZER_KINDS
from insightface_adadistill.errors import SettingError

GROUP_NAMES = ("backbone", "head")


def host_param_groups(backbone: nn.Module, head: nn.Module) -> List[Dict[str, object]]:
    """Two groups in the host order holding every parameter, frozen ones included: the host builds
    `SGD(params=[{"params": backbone.parameters()}, {"params": pfc.parameters()}])`, so iresnet's frozen
    `features.weight` (never a gradient: the update is unchanged) stays in, and our optimizer `state_dict`
    loads into the host's `opt.load_state_dict` (same group sizes, same indices)."""
    return [{"params": list(module.parameters()), "name": name}
            for name, module in zip(GROUP_NAMES, (backbone, head))]


def build_optimizer(kind: str, param_groups: List[Dict[str, object]], *, lr: float,
                    momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (no Nesterov, no dampening) or AdamW (default betas and eps; no `momentum`). arcface_torch
    hard-codes SGD momentum 0.9; we use the config's (default 0.9). Weight decay applies to every
    parameter, BN and PReLU included, as in the host."""
    if not any(p.requires_grad for group in param_groups for p in group["params"]):
        raise ValueError("no trainable parameters: every parameter has requires_grad=False; "
                         "unfreeze the backbone before building the optimizer")
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise SettingError(f"unknown optimizer {kind!r}; use one of {', '.join(OPTIMIZER_KINDS)}")
