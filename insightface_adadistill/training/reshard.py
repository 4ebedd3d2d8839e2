"""Re-sharding a checkpoint set for another world size (arcface_torch cannot: issue #1811).

The head is sharded by class (`shard_classes`): rank r holds rows [start_r, start_r + num_local_r)
of the (C, E) class matrix. To resume on W' ranks, all W saved rank files are concatenated in rank
order (the global class order) and sliced again; replicated state comes from rank 0.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Sequence

import torch

from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.training.checkpoint import HEAD_GROUP

logger = logging.getLogger(__name__)


def reshard_checkpoint(shards: Sequence[Mapping[str, Any]], rank: int, world_size: int) -> Dict[str, Any]:
    """Rebuild `rank`'s checkpoint for `world_size` ranks from all saved rank files (in rank order).

    Per-class tensors (the head's `head_sharded_keys`, and optimizer state of the head group whose
    first dimension is the old shard size) are concatenated in rank order, which gives the global
    class order, then sliced with the arcface_torch shard formula. Replicated state (backbone, its
    optimizer state, the scheduler and the scaler, identical on every rank under DDP) comes from
    rank 0. Per-rank RNG states, `head_extra` and a partly accumulated gradient
    (`accumulated_grads`) cannot be split and restart (None). `batch_in_epoch` is rescaled to
    keep the number of samples seen, assuming the same per-rank batch size.
    """
    num_classes, old_world = shards[0]["num_classes"], len(shards)
    old_sizes = [shard_classes(num_classes, r, old_world)[1] for r in range(old_world)]
    start, num_local = shard_classes(num_classes, rank, world_size)
    head = dict(shards[0]["state_dict_softmax_fc"])
    for key in shards[0]["head_sharded_keys"]:
        parts = [s["state_dict_softmax_fc"][key] for s in shards]
        if [p.shape[0] for p in parts] != old_sizes:
            raise ValueError(f"head state {key!r} has shard sizes {[p.shape[0] for p in parts]}, expected "
                             f"{old_sizes} for num_classes={num_classes} on {old_world} ranks")
        head[key] = torch.cat(parts)[start:start + num_local].clone()
    if shards[0].get("accumulated_grads") is not None:
        logger.warning("the set was saved inside gradient accumulation: its partly accumulated "
                       "gradient cannot be re-sharded and is dropped (resume is not exact)")
    resharded = dict(shards[0])
    resharded.update(
        state_dict_softmax_fc=head,
        state_optimizer=_reshard_optimizer([s["state_optimizer"] for s in shards], old_sizes,
                                           start, num_local),
        rank=rank, world_size=world_size, rng_state=None, head_extra=None, accumulated_grads=None,
        batch_in_epoch=shards[0]["batch_in_epoch"] * old_world // world_size,
    )
    return resharded


def _reshard_optimizer(states: Sequence[Mapping[str, Any]], old_sizes: List[int], start: int,
                       num_local: int) -> Dict[str, Any]:
    """Head-group optimizer state (momentum, exp_avg, ...) re-sharded like the head weight.

    A head-group entry that is neither per-class nor identical on every rank cannot be split; its
    parameter's state is dropped with a warning (the optimizer re-creates it at the next step).
    """
    param_states = dict(states[0]["state"])
    groups = states[0]["param_groups"]
    head_ids = groups[HEAD_GROUP]["params"] if len(groups) > HEAD_GROUP else []
    for pid in head_ids:
        per_rank = [s["state"].get(pid) for s in states]
        if any(p is None for p in per_rank):
            param_states.pop(pid, None)
            continue
        new_state = {}
        for name, first in per_rank[0].items():
            values = [p[name] for p in per_rank]
            if isinstance(first, torch.Tensor) and first.dim() >= 1 and \
                    [v.shape[0] for v in values] == old_sizes:
                new_state[name] = torch.cat(values)[start:start + num_local].clone()
            elif all(_same(first, v) for v in values[1:]):
                new_state[name] = first
            else:
                logger.warning("dropping optimizer state of head parameter %s: %r differs across "
                               "ranks and is not per-class", pid, name)
                new_state = None
                break
        if new_state is None:
            param_states.pop(pid, None)
        else:
            param_states[pid] = new_state
    return {"state": param_states, "param_groups": groups}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b
