"""Load a teacher's trained classifier (class centres) for ArcDistill / CosDistill.

Two formats:
- arcface_torch Partial FC shards, one `checkpoint_gpu_{rank}.pt` per rank (legacy 2021 runs:
  `rank_{rank}_softmax_weight.pt`, a plain tensor). Rank r holds the contiguous classes
  [start_r, start_r + num_local_r) with num_local_r = C // W + (r < C % W), as a (num_local_r, E)
  `state_dict_softmax_fc["weight"]`. Concatenating in rank order gives the (C, E) matrix.
- the published AdaDistill code's header file: a state_dict with one `kernel` of shape (E, C).
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from insightface_adadistill.backbones.loading import describe_checkpoint
from insightface_adadistill.errors import InputNotFoundError, WeightsError
from insightface_adadistill.serialization import load_file

PathsOrGlob = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
RANK_PATTERNS = (re.compile(r"checkpoint_gpu_(\d+)\.pt$"), re.compile(r"rank_(\d+)_softmax_weight\.pt$"))
SHARD_NAMES = "checkpoint_gpu_{rank}.pt (or legacy rank_{rank}_softmax_weight.pt)"


def shard_sizes(num_classes: int, world_size: int) -> List[int]:
    """arcface_torch's Partial FC split: num_local = C // W + (rank < C % W) for each rank."""
    return [num_classes // world_size + int(rank < num_classes % world_size) for rank in range(world_size)]


def _expand(paths_or_glob: PathsOrGlob) -> List[Path]:
    """One path, one glob pattern, or a list of either -> the file paths, in the given/sorted order."""
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    paths: List[Path] = []
    for item in items:
        if glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise InputNotFoundError(f"no teacher classifier files match {str(item)!r}; check teacher_classifier")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(item))
    if not paths:
        raise WeightsError("teacher_classifier is empty; give the checkpoint_gpu_*.pt files or a header file")
    return paths


def _header_kernel(obj: Any, path: Path) -> Optional[Tensor]:
    """The `kernel` tensor of a header state_dict (also under 'state_dict' or a `module.` prefix), if any."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        return None
    kernels = [k for k, v in obj.items() if isinstance(v, Tensor) and (k == "kernel" or str(k).endswith(".kernel"))]
    if len(kernels) > 1:
        raise WeightsError(f"{path}: several header kernels {kernels}; keep one header per file")
    return obj[kernels[0]] if kernels else None


def _from_header(kernel: Tensor, path: Path, num_classes: int, embedding_size: int) -> Tensor:
    """(E, C) header kernel -> (C, E) class centres, after checking both sizes."""
    if kernel.dim() != 2:
        raise WeightsError(f"{path}: header kernel has shape {list(kernel.shape)}; expected (E, C) = "
                         f"({embedding_size}, {num_classes})")
    if kernel.shape[0] != embedding_size:
        transposed = " (it looks like (C, E); the published header stores (E, C))" \
            if kernel.shape[1] == embedding_size else ""
        raise WeightsError(f"{path}: header kernel has shape {list(kernel.shape)}, its first dimension should "
                         f"be embedding_size={embedding_size}{transposed}")
    if kernel.shape[1] != num_classes:
        raise WeightsError(f"{path}: the header holds {kernel.shape[1]} classes, but num_classes={num_classes}; "
                         f"set num_classes={kernel.shape[1]} (the teacher's training classes) or pass the right file")
    return kernel.t().float().contiguous()  # (C, E)


def _rank_of(path: Path) -> int:
    for pattern in RANK_PATTERNS:
        match = pattern.search(path.name)
        if match:
            return int(match.group(1))
    raise WeightsError(f"cannot tell the rank of {path}: Partial FC shard files must be named {SHARD_NAMES}")


def _shard_weight(obj: Any, path: Path, embedding_size: int) -> Tensor:
    """The (num_local, E) weight of one shard file."""
    weight = obj
    if isinstance(obj, Mapping):
        head = obj.get("state_dict_softmax_fc")
        weight = head.get("weight") if isinstance(head, Mapping) else None
    if not isinstance(weight, Tensor):
        raise WeightsError(f"{path}: neither a Partial FC shard (a checkpoint with "
                         f"state_dict_softmax_fc['weight']) nor a header file (a state_dict with 'kernel'); "
                         f"found {describe_checkpoint(obj)}")
    if weight.dim() != 2 or weight.shape[1] != embedding_size:
        raise WeightsError(f"{path}: Partial FC weight has shape {list(weight.shape)}; expected "
                         f"(num_local, {embedding_size}) for embedding_size={embedding_size}")
    return weight


def _from_shards(shards: List[Tuple[int, Path, Tensor]], num_classes: int) -> Tensor:
    """Concatenate (rank, path, weight) shards in rank order after checking arcface_torch's split."""
    shards.sort(key=lambda shard: shard[0])
    ranks = [rank for rank, _, _ in shards]
    world_size = len(shards)
    if ranks != list(range(world_size)):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise WeightsError(f"Partial FC shard ranks {ranks} are not 0..{world_size - 1} (missing {missing}, "
                         f"or a rank given twice); pass every {SHARD_NAMES} file of the teacher run once")
    total = sum(weight.shape[0] for _, _, weight in shards)
    if total != num_classes:
        sizes = [weight.shape[0] for _, _, weight in shards]
        raise WeightsError(f"the {world_size} Partial FC shards hold {total} classes ({sizes}), but "
                         f"num_classes={num_classes}; set num_classes={total} (the teacher's training "
                         f"classes) or pass all shard files of the teacher run")
    for (rank, path, weight), expected in zip(shards, shard_sizes(num_classes, world_size)):
        if weight.shape[0] != expected:
            raise WeightsError(f"{path}: rank {rank} holds {weight.shape[0]} classes, but arcface_torch splits "
                             f"{num_classes} classes over {world_size} ranks as {expected} for rank {rank}; "
                             "the files come from different runs or are misnamed")
    return torch.cat([weight.float() for _, _, weight in shards]).contiguous()  # (C, E)


def load_teacher_classifier(paths_or_glob: PathsOrGlob, num_classes: int, embedding_size: int) -> Tensor:
    """Read the teacher's classifier as a (num_classes, embedding_size) float32 CPU tensor.

    `paths_or_glob` is a header file or the shard files (a list, a glob such as
    'work_dirs/r50/checkpoint_gpu_*.pt', or a list of globs). A `WeightsError` (a ValueError) names
    unknown content, missing or duplicate ranks, shard sizes that break the Partial FC split, or a
    class count or embedding width other than the arguments (with the count found).
    """
    paths = _expand(paths_or_glob)
    shards = []
    for path in paths:  # one file at a time: checkpoint files also hold the backbone and optimizer
        obj = load_file(path)
        kernel = _header_kernel(obj, path)
        if kernel is not None:
            if len(paths) != 1:
                raise WeightsError(f"{path} is a header file, which holds the whole classifier; pass it "
                                 f"alone, not with {len(paths) - 1} other files")
            return _from_header(kernel, path, num_classes, embedding_size)
        weight = _shard_weight(obj, path, embedding_size)
        shards.append((_rank_of(path), path, weight))
    return _from_shards(shards, num_classes)
