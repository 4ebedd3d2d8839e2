"""The optimizer, with arcface_torch's two parameter groups: [backbone, head] (as `train_v2.py`).

The layout is fixed at two groups, even when the head owns no parameters (AdaDistill's class
centres are buffers, so its group is empty): the group index then always means the same thing, and
the scheduler, the checkpoint re-sharding (group 1 = per-class head state) and an optimizer
`state_dict` saved by a standalone run all agree. torch accepts an empty group.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from insightface_adadistill.config.defaults import OPTIMIZER_KINDS
from insightface_adadistill.errors import SettingError
from insightface_adadistill.training.checkpoint import CheckpointError

GROUP_NAMES = ("backbone", "head")


def host_param_groups(backbone: nn.Module, head: nn.Module) -> List[Dict[str, object]]:
    """Two groups in the host order holding every parameter, frozen ones included.

    arcface_torch builds `SGD(params=[{"params": backbone.parameters()}, {"params":
    pfc.parameters()}])`, so iresnet's frozen all-ones `features.weight` sits in the backbone
    group. It never gets a gradient, so the update is unchanged; keeping it keeps our optimizer
    `state_dict` loadable by the host's `opt.load_state_dict` (same group sizes, same indices).
    """
    return [{"params": list(module.parameters()), "name": name}
            for name, module in zip(GROUP_NAMES, (backbone, head))]


def upgrade_group_layout(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """A saved optimizer state with the current group layout.

    Sets written before the host layout (frozen parameters left out of the groups, e.g. [93, 1]
    for an iresnet instead of [94, 1]) are renumbered: the i-th saved entry of a group belongs to
    the group's i-th parameter with `requires_grad`. Any other mismatch is an error.
    """
    saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
    groups = optimizer.param_groups
    if saved_sizes == [len(group["params"]) for group in groups]:
        return dict(saved)
    trainable = [[i for i, p in enumerate(group["params"]) if p.requires_grad] for group in groups]
    if saved_sizes != [len(t) for t in trainable]:
        raise CheckpointError(f"the saved optimizer groups hold {saved_sizes} parameters, this run's "
                         f"{[len(g['params']) for g in groups]} (trainable {[len(t) for t in trainable]}); "
                         "the checkpoint belongs to another network or head")
    new_ids: Dict[int, int] = {}
    new_groups, offset = [], 0
    for saved_group, group, indices in zip(saved["param_groups"], groups, trainable):
        new_ids.update({old: offset + i for old, i in zip(saved_group["params"], indices)})
        new_groups.append({**saved_group, "params": list(range(offset, offset + len(group["params"])))})
        offset += len(group["params"])
    return {"state": {new_ids[k]: v for k, v in saved["state"].items()}, "param_groups": new_groups}


def build_optimizer(kind: str, param_groups: List[Dict[str, object]], *, lr: float,
                    momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (momentum honoured, no Nesterov, no dampening) or AdamW (default betas and eps).

    arcface_torch hard-codes SGD momentum 0.9 and ignores `cfg.momentum`; we use the config value
    (whose default is 0.9, so default runs match). Weight decay applies to every parameter, BN and
    PReLU included, as in the host. `momentum` is ignored by AdamW.
    """
    if not any(p.requires_grad for group in param_groups for p in group["params"]):
        raise ValueError("no trainable parameters: every parameter has requires_grad=False; "
                         "unfreeze the backbone before building the optimizer")
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise SettingError(f"unknown optimizer {kind!r}; use one of {', '.join(OPTIMIZER_KINDS)}")
