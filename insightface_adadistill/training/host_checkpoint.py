"""Turn an arcface_torch output folder's `checkpoint_gpu_*.pt` into a checkpoint set we can resume.

The host writes one file per rank with `epoch`, `global_step`, `state_dict_backbone`,
`state_dict_softmax_fc`, `state_optimizer` and `state_lr_scheduler` at every epoch end
(`save_all_states=True`). The set built from them adds our bookkeeping keys; what the host never
saved (loss scaler, RNG states, sampler) restarts, so the resumed run continues that run from
the start of epoch `epoch`, as arcface_torch's own `resume=True` does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

import torch

from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.serialization import load_file
from insightface_adadistill.training.checkpoint import FORMAT_VERSION, CheckpointError
from insightface_adadistill.training.store import find_latest_complete, rank_files, save_checkpoint_set

HOST_KEYS = ("epoch", "global_step", "state_dict_backbone", "state_dict_softmax_fc", "state_optimizer",
             "state_lr_scheduler")


def convert_host_checkpoint(output: str | os.PathLike) -> Path:
    """Write `<output>/checkpoints/step_*/` from the host rank files at the top of `output`.

    Returns:
        the new complete set folder; `resume=True` with this folder as `output` continues from it.

    Raises:
        CheckpointError: no host rank files, ranks missing, a file without the host keys, shard
            sizes that do not add up, or a folder that already holds a set.
    """
    output = Path(output)
    files = rank_files(output)
    if not files:
        raise CheckpointError(f"{output} holds no checkpoint_gpu_*.pt files to convert (arcface_torch "
                              "writes them with save_all_states=True)")
    existing = find_latest_complete(output)
    if existing is not None:
        raise CheckpointError(f"{output} already holds the checkpoint set {existing}: nothing to convert; "
                              "resume with --set resume=True")
    world_size = len(files)
    if [f.name for f in files] != [f"checkpoint_gpu_{r}.pt" for r in range(world_size)]:
        raise CheckpointError(f"{output}: rank files {[f.name for f in files]} are not ranks 0..{world_size - 1}; "
                              "copy every rank's file of the host run")
    host = [_load_host_file(f) for f in files]
    num_classes = sum(h["state_dict_softmax_fc"]["weight"].shape[0] for h in host)
    checkpoints = [_as_rank_file(h, rank, world_size, num_classes, output.name, f)
                   for rank, (h, f) in enumerate(zip(host, files))]
    embedding_size = int(host[0]["state_dict_softmax_fc"]["weight"].shape[1])
    fingerprint = {"num_classes": num_classes, "embedding_size": embedding_size}
    # one process writes every rank's file; rank 0 goes last and marks the set complete
    for checkpoint in reversed(checkpoints):
        set_dir = save_checkpoint_set(output, checkpoint, agree=lambda ok: ok, keep=1, fingerprint=fingerprint)
    return set_dir


def _load_host_file(file: Path) -> Dict[str, Any]:
    checkpoint = load_file(file)
    missing = [k for k in HOST_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{file}: not an arcface_torch checkpoint (missing {missing})")
    if "weight" not in checkpoint["state_dict_softmax_fc"]:
        raise CheckpointError(f"{file}: state_dict_softmax_fc has no Partial FC 'weight'")
    return checkpoint


def _as_rank_file(host: Dict[str, Any], rank: int, world_size: int, num_classes: int, run_name: str,
                  file: Path) -> Dict[str, Any]:
    num_local = shard_classes(num_classes, rank, world_size)[1]
    weight = host["state_dict_softmax_fc"]["weight"]  # (num_local, E)
    if weight.shape[0] != num_local:
        raise CheckpointError(f"{file}: holds {weight.shape[0]} classes, but rank {rank} of {world_size} "
                              f"holds {num_local} of num_classes={num_classes}; the files are from "
                              "different runs")
    sharded: List[str] = [k for k, v in host["state_dict_softmax_fc"].items()
                          if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == num_local]
    return {**{k: host[k] for k in HOST_KEYS}, "state_grad_scaler": {}, "rng_state": None,
            "batch_in_epoch": 0, "rank": rank, "world_size": world_size, "num_classes": num_classes,
            "config_name": run_name, "head_extra": None, "head_sharded_keys": sharded,
            "accumulated_grads": None, "format_version": FORMAT_VERSION}
