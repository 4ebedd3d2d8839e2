"""The optimizer, with arcface_torch's two parameter groups: [backbone, head] (spec 2.6).

The layout is fixed at two groups, even when the head owns no parameters (AdaDistill's class
centres are buffers, so its group is empty): the group index then always means the same thing, and
the scheduler, the checkpoint re-sharding (group 1 = per-class head state) and an optimizer
`state_dict` saved by a standalone run all agree. torch accepts an empty group.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

OPTIMIZER_KINDS = ("sgd", "adamw")
GROUP_NAMES = ("backbone", "head")


def trainable_param_groups(backbone: nn.Module, head: nn.Module) -> List[Dict[str, object]]:
    """Two groups in the host order, holding only parameters with `requires_grad`.

    Frozen parameters (iresnet's all-ones `features.weight`) are left out: they never get a gradient,
    so the update is the same as the host's, but our optimizer `state_dict` has fewer entries than
    an arcface_torch one and the two cannot be loaded into each other.
    """
    return [
        {"params": [p for p in module.parameters() if p.requires_grad], "name": name}
        for name, module in zip(GROUP_NAMES, (backbone, head))
    ]


def build_optimizer(kind: str, param_groups: List[Dict[str, object]], *, lr: float,
                    momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (momentum honoured, no Nesterov, no dampening) or AdamW (default betas and eps).

    arcface_torch hard-codes SGD momentum 0.9 and ignores `cfg.momentum`; we use the config value
    (whose default is 0.9, so default runs match). Weight decay applies to every parameter, BN and
    PReLU included, as in the host. `momentum` is ignored by AdamW.
    """
    if not any(group["params"] for group in param_groups):
        raise ValueError("no trainable parameters: every parameter has requires_grad=False; "
                         "unfreeze the backbone before building the optimizer")
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}; use one of {', '.join(OPTIMIZER_KINDS)}")
