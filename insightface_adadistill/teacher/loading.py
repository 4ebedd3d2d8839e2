"""Load a pretrained teacher backbone from arcface_torch or AdaDistill files, refusing anything doubtful.

Accepted files (all read with `serialization.load_file`, i.e. `torch.load(weights_only=True)`):
- arcface_torch `model.pt` / zoo `backbone.pth`: the plain backbone state_dict;
- arcface_torch `checkpoint_gpu_{rank}.pt`: a dict whose `state_dict_backbone` is that state_dict;
- the published AdaDistill code's `*backbone.pth`: the same iResNet keys, possibly saved from a
  DistributedDataParallel wrapper, i.e. every key prefixed with `module.`.

Unlike the published code, which logs a missing or mismatching file and trains on with a random
teacher, every problem here is an exception naming the file, the network and the keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from insightface_adadistill.backbones import get_model, list_backbones
from insightface_adadistill.serialization import load_file
from insightface_adadistill.teacher.frozen import FrozenTeacher, check_precision

DDP_PREFIX = "module."
SHOW_KEYS = 5  # keys listed per category in mismatch messages


def describe_checkpoint(obj: Any) -> str:
    """A short description of a loaded object for error messages."""
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {list(obj.shape)}"
    if isinstance(obj, Mapping):
        keys = list(obj)
        more = f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
        return f"a dict with keys {keys[:8]}{more}"
    return f"a {type(obj).__name__}"


def load_backbone_weights(path: str | os.PathLike) -> Dict[str, Tensor]:
    """Read a backbone state_dict from any accepted file format (see the module docstring).

    Returns:
        key -> tensor, with arcface_torch key names (no `module.` prefix), on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds something other than a backbone state_dict.
    """
    obj = load_file(path)
    state = obj.get("state_dict_backbone", obj) if isinstance(obj, Mapping) else obj
    if not (isinstance(state, Mapping) and state and all(isinstance(v, Tensor) for v in state.values())):
        raise ValueError(
            f"{path}: not a backbone state_dict; found {describe_checkpoint(obj)}. Expected an "
            "arcface_torch model.pt/backbone.pth (key -> tensor), a checkpoint_gpu_{rank}.pt with "
            "'state_dict_backbone', or an AdaDistill *backbone.pth"
        )
    if all(key.startswith(DDP_PREFIX) for key in state):
        return {key[len(DDP_PREFIX):]: value for key, value in state.items()}
    return dict(state)


def _shape(tensor: Tensor) -> List[int]:
    return list(tensor.shape)


def _first(items: Sequence[str]) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > SHOW_KEYS else ""
    return ", ".join(items[:SHOW_KEYS]) + more


def _networks_with_keys(keys: set) -> List[str]:
    """Registered backbones whose state_dict has exactly `keys` (built on the meta device: no memory)."""
    matches = []
    for name in list_backbones():
        with torch.device("meta"):
            if set(get_model(name).state_dict()) == keys:
                matches.append(name)
    return matches


def check_state_dict(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], path: str | os.PathLike,
                     network: str, embedding_size: int) -> None:
    """Raise a ValueError listing missing, unexpected and mis-shaped keys, with a hint at the cause."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [
        f"{key} file {_shape(found[key])} vs model {_shape(expected[key])}"
        for key in expected
        if key in found and found[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [
        f"{path}: does not fit teacher_network={network!r} with embedding_size={embedding_size} "
        f"({len(found)} entries in the file, {len(expected)} expected)"
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            lines.append(f"  {label} ({len(items)}): {_first(items)}")
    if missing or unexpected:
        candidates = _networks_with_keys(set(found))
        lines.append(
            f"Hint: wrong teacher_network? The file's keys match {candidates}." if candidates else
            "Hint: no registered backbone has these keys; is this a backbone file (model.pt, "
            "backbone.pth, checkpoint_gpu_*.pt) rather than a head or optimizer file?"
        )
    else:
        lines.append(
            "Hint: the key names match but the shapes do not: the teacher was trained with another "
            "embedding_size (teacher and student sizes must be equal) or is another variant of this network"
        )
    raise ValueError("\n".join(lines))


def check_embedding_sizes(teacher_dim: int, student_dim: int) -> None:
    """AdaDistill moves the student's class centres towards teacher embeddings: the sizes must match."""
    if teacher_dim != student_dim:
        raise ValueError(
            f"teacher embedding size {teacher_dim} != student embedding size {student_dim}: the class "
            f"centres hold teacher embeddings and are compared with student embeddings. Set "
            f"embedding_size={teacher_dim} for the student or use a teacher trained with {student_dim}"
        )


def build_teacher(network: str, weights: Optional[str | os.PathLike], embedding_size: int,
                  device: torch.device | str, dtype: str = "fp32", channels_last: bool = False) -> FrozenTeacher:
    """Build `network`, load `weights` strictly and freeze it; never returns a random teacher.

    Args:
        network: registered backbone name, e.g. 'r50'.
        weights: teacher file (model.pt, backbone.pth, checkpoint_gpu_{rank}.pt, AdaDistill *backbone.pth).
        embedding_size: the teacher's embedding size E (equal to the student's).
        device: where the teacher runs.
        dtype: forward precision, 'fp32', 'bf16' or 'fp16' (autocast).
        channels_last: run in channels_last memory format.

    Returns:
        A `FrozenTeacher`: (B, 3, 112, 112) -> (B, E) float32, eval mode pinned, no gradients.
    """
    check_precision(dtype)
    if weights is None or str(weights) == "":
        raise ValueError(
            f"teacher_weights is not set for teacher_network={network!r}: distillation needs a trained "
            "teacher (model.pt, backbone.pth or checkpoint_gpu_0.pt); a random teacher is never used"
        )
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"teacher weights {weights} not found (teacher_network={network!r}); check teacher_weights"
        )
    state = load_backbone_weights(weights)
    with torch.device("meta"):  # no random init to throw away: the file provides every tensor
        model = get_model(network, num_features=embedding_size)
    check_state_dict(model.state_dict(), state, weights, network, embedding_size)
    # assign=True adopts the file's tensors; cast to fp32 first so a half-precision file still
    # gives an fp32 model (precision is the forward's autocast, not the storage).
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"backbone {network!r} has tensors outside its state_dict: {left_on_meta[:SHOW_KEYS]}")
    return FrozenTeacher(model.to(device), precision=dtype, channels_last=channels_last)
