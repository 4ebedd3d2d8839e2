"""The checkpoint file format: arcface_torch-compatible rank files and `model.pt`.

Layout of `<output>` (see docs/safety.md; the first two lines are arcface_torch's own files):

    model.pt                          rank 0's backbone state_dict, fp32, no `module.` prefix (host)
    checkpoint_gpu_{rank}.pt          host file names: hard links to the newest complete set
    checkpoints/step_{step:09d}/      one folder per saved global step (`store.py`)
        checkpoint_gpu_{rank}.pt      one file per rank (`TrainState.state_dict()`)
        COMPLETE                      written by rank 0 once every rank's file is on disk

Each rank file holds the host keys (`epoch`, `global_step`, `state_dict_backbone`,
`state_dict_softmax_fc`, `state_optimizer`, `state_lr_scheduler`) and ours: `state_grad_scaler`,
`rng_state`, `batch_in_epoch`, `rank`, `world_size`, `num_classes`, `config_name`, `head_extra`,
`head_sharded_keys`, `accumulated_grads` and `format_version`. Everything is tensors and plain
containers, so it loads with `weights_only=True`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn

from insightface_adadistill.backbones.loading import strip_wrapper_prefixes, unwrap
from insightface_adadistill.errors import UserError

FORMAT_VERSION = 1
HEAD_GROUP = 1  # optimizer param group holding the per-class head parameters (see optim.py)


class CheckpointError(UserError, ValueError):
    """A checkpoint set or file cannot be used for this run; the message names it and the fix."""


def backbone_state(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """The backbone's state_dict as the host saves `model.pt`: CPU, fp32, no wrapper prefixes."""
    state = {}
    for key, value in strip_wrapper_prefixes(unwrap(backbone).state_dict()).items():
        value = value.detach().cpu()
        state[key] = value.float() if value.is_floating_point() else value
    return state


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor detached and moved to the CPU (containers rebuilt, the rest kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


_STORABLE = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device, torch.Size)


def check_storable(obj: Any, where: str) -> None:
    """Fail at save time, naming the entry, rather than at resume time when weights_only refuses it."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            check_storable(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_storable(value, f"{where}[{i}]")
    elif not isinstance(obj, _STORABLE):
        raise TypeError(f"{where} is a {type(obj).__name__}, which weights_only loading refuses; "
                        "store tensors, numbers, strings, lists or dicts instead")
