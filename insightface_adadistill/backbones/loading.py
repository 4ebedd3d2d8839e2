"""Load trained backbone weights from arcface_torch or AdaDistill files, refusing anything doubtful.

The one loader behind the teacher, `verify`, `eval-ijb` and `export-onnx`. Accepted files (all read
with `serialization.load_file`, i.e. `torch.load(weights_only=True)`):
- arcface_torch `model.pt` / zoo `backbone.pth`: the plain backbone state_dict;
- arcface_torch `checkpoint_gpu_{rank}.pt`: a dict whose `state_dict_backbone` is that state_dict;
- the published AdaDistill code's `*backbone.pth`: the same iResNet keys, possibly saved from a
  DistributedDataParallel wrapper, i.e. every key prefixed with `module.`;
- AdaFace's PyTorch Lightning `.ckpt` (or its `state_dict` saved alone): the network's keys carry
  `model.`, the margin head's `head.` (dropped: a teacher needs the network only).

A file that does not fit the requested network is compared with every registered backbone by key
names and shapes, so the error names the network (and embedding size) it was trained as.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from insightface_adadistill.backbones import backbone_spec, get_model, list_backbones
from insightface_adadistill.errors import WeightsError
from insightface_adadistill.serialization import load_file

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile
SHOW_KEYS = 3  # example keys per category in mismatch messages
LIGHTNING_NETWORK, LIGHTNING_HEAD = "model.", "head."  # AdaFace's LightningModule attributes


# ---------------------------------------------------------------- wrappers

def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel (`.module`) and torch.compile
    (`._orig_mod`), however deeply nested; any wrapper that keeps its model in `.module` counts.

    Why: evaluation and saving must not go through a wrapper (DDP's forward runs collectives on
    rank 0 alone; its state_dict keys carry `module.`).
    """
    while True:
        inner = getattr(module, "module", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """`state` without the `module.` / `_orig_mod.` prefix that a wrapper put on EVERY key (repeatedly).

    A prefix on only some keys is left alone: it is then part of the network's own names.
    """
    state = dict(state)
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in state)), None)
        if prefix is None:
            break
        state = {key[len(prefix):]: value for key, value in state.items()}
    return state


# ---------------------------------------------------------------- reading a file

def describe_checkpoint(obj: Any) -> str:
    """A short description of a loaded object for error messages."""
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {list(obj.shape)}"
    if isinstance(obj, Mapping):
        keys = list(obj)
        more = f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
        return f"a dict with keys {keys[:8]}{more}"
    return f"a {type(obj).__name__}"


def _lightning_network(state: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The network part of an AdaFace LightningModule state_dict (`model.*`; `head.*` dropped), else None."""
    if not (any(key.startswith(LIGHTNING_NETWORK) for key in state)
            and all(key.startswith((LIGHTNING_NETWORK, LIGHTNING_HEAD)) for key in state)):
        return None
    return {key[len(LIGHTNING_NETWORK):]: value for key, value in state.items() if key.startswith(LIGHTNING_NETWORK)}


def load_backbone_weights(path: str | os.PathLike) -> Dict[str, Tensor]:
    """Read a backbone state_dict from any accepted file format (see the module docstring).

    Returns:
        key -> tensor, with the network's own key names (no wrapper or Lightning prefix), on the CPU.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: the file holds something other than a backbone state_dict (a ValueError).
    """
    obj = load_file(path)
    state = obj
    if isinstance(obj, Mapping):
        state = obj.get("state_dict_backbone", obj.get("state_dict", obj))
    if isinstance(state, Mapping) and all(isinstance(key, str) for key in state):
        state = _lightning_network(strip_wrapper_prefixes(state)) or state
    if not (isinstance(state, Mapping) and state and all(isinstance(v, Tensor) for v in state.values())):
        raise WeightsError(
            f"{path}: not a backbone state_dict; found {describe_checkpoint(obj)}. Expected an "
            "arcface_torch model.pt/backbone.pth (key -> tensor), a checkpoint_gpu_{rank}.pt with "
            "'state_dict_backbone', an AdaDistill *backbone.pth or an AdaFace .ckpt"
        )
    return strip_wrapper_prefixes(state)


# ---------------------------------------------------------------- which network is this file?

@functools.lru_cache(maxsize=None)
def _meta_state(network: str, embedding_size: int) -> Dict[str, Tensor]:
    """`network`'s state_dict built on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return get_model(network, num_features=embedding_size).state_dict()


def _same_shapes(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> bool:
    return set(expected) == set(found) and all(expected[k].shape == v.shape for k, v in found.items())


def _embedding_size_in(network: str, state: Mapping[str, Tensor]) -> Optional[int]:
    """The embedding size `state` was saved with, if its keys are `network`'s; None otherwise.

    Read from the file: build the network at two sizes, find a dimension that follows the size,
    and take the file's value there.
    """
    default = backbone_spec(network).embedding_size
    base = _meta_state(network, default)
    if set(base) != set(state):
        return None
    if _same_shapes(base, state):
        return default
    probe = _meta_state(network, default + 1)
    for key, tensor in base.items():
        moved = [i for i, (a, b) in enumerate(zip(tensor.shape, probe[key].shape)) if a != b]
        if moved and state[key].dim() == tensor.dim():
            return int(state[key].shape[moved[0]])
    return default


def matching_networks(state: Mapping[str, Tensor]) -> List[Tuple[str, int]]:
    """Every registered (network, embedding size) whose state_dict has exactly `state`'s keys and shapes."""
    sizes = [(name, _embedding_size_in(name, state)) for name in list_backbones()]
    return [(name, size) for name, size in sizes if size is not None and _same_shapes(_meta_state(name, size), state)]


@dataclass(frozen=True)
class Flags:
    """How the user names the network and the embedding size, for the fix an error suggests."""

    network: str = "--network"
    embedding_size: str = "--embedding-size"

    @staticmethod
    def setting(flag: str, value: Any) -> str:
        return f"{flag} {value}" if flag.startswith("-") else f"{flag} = {value!r}"


CONFIG_FLAGS = Flags("teacher_network", "embedding_size")


def _examples(items: Sequence[str]) -> str:
    more = ", ..." if len(items) > SHOW_KEYS else ""
    return ", ".join(items[:SHOW_KEYS]) + more


def _suggestion(matches: List[Tuple[str, int]], network: str, embedding_size: Optional[int], flags: Flags) -> str:
    def fix(name: str, size: int) -> str:
        parts = [Flags.setting(flags.network, name)] if name != network else []
        parts += [Flags.setting(flags.embedding_size, size)] if embedding_size not in (None, size) else []
        return " and ".join(parts)

    looks = " or ".join(f"a {name} with embedding size {size}" for name, size in matches)
    fixes = " or ".join(fix(name, size) for name, size in matches)
    return f"this file looks like {looks} (keys and shapes match); pass {fixes}"


def check_state_dict(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], path: str | os.PathLike,
                     network: str, embedding_size: Optional[int], flags: Flags = Flags()) -> None:
    """Raise one ValueError when `found` does not fit `expected` exactly, naming the fix.

    `embedding_size` is the one the user gave; None when it was to be read from the file.

    If a registered network matches the file's keys and shapes, the message names it; otherwise it
    gives the counts of missing, unexpected and mis-shaped keys with a few examples each.
    """
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [f"{key} file {list(found[key].shape)} vs model {list(expected[key].shape)}"
                  for key in expected if key in found and found[key].shape != expected[key].shape]
    if not (missing or unexpected or mismatched):
        return
    head = f"{path}: does not fit {Flags.setting(flags.network, network)}"
    head += f" with embedding size {embedding_size}" if embedding_size is not None else ""
    matches = matching_networks(found)
    if matches:
        raise WeightsError(f"{head}: {_suggestion(matches, network, embedding_size, flags)}")
    counts = ", ".join(f"{len(items)} {label} (e.g. {_examples(items)})"
                       for label, items in (("missing", missing), ("unexpected", unexpected),
                                            ("of another shape", mismatched)) if items)
    hint = ("is this a backbone file (model.pt, backbone.pth, checkpoint_gpu_*.pt) rather than a head or "
            "optimizer file?" if missing or unexpected else
            "the file holds another variant of this network than the registered one")
    raise WeightsError(f"{head} ({len(found)} entries in the file, {len(expected)} expected); keys: {counts}. "
                     f"No registered backbone has these keys and shapes: {hint}")


# ---------------------------------------------------------------- the loader

def load_backbone(network: str, weights: str | os.PathLike, embedding_size: Optional[int] = None, *,
                  flags: Flags = Flags(), **model_kwargs: Any) -> nn.Module:
    """Build `network`, load `weights` strictly; an fp32 model on the CPU in eval mode.

    Args:
        network: a registered backbone name (`list_backbones()`).
        weights: model.pt, backbone.pth, checkpoint_gpu_{rank}.pt, AdaDistill *backbone.pth or AdaFace .ckpt.
        embedding_size: `num_features`; None reads it from the file (the backbone's default when
            the file is not this network's). A given size that the file does not have is an error
            naming both.
        flags: how the caller's user names network and size (CLI flags or config keys), for errors.
        model_kwargs: more `get_model` kwargs, e.g. `fp16=False, dropout=0.0`.

    Raises:
        FileNotFoundError: no such file. ValueError: not a backbone file, or it does not fit;
        the message names the matching registered network when there is one.
    """
    default_size = backbone_spec(network).embedding_size  # also refuses an unknown name before any file is read
    state = load_backbone_weights(weights)
    size = embedding_size or _embedding_size_in(network, state) or default_size
    with torch.device("meta"):  # no random init to throw away: the file provides every tensor
        model = get_model(network, num_features=size, **model_kwargs)
    check_state_dict(model.state_dict(), state, weights, network, embedding_size, flags)
    # assign=True adopts the file's tensors; cast to fp32 first so a half-precision file still
    # gives an fp32 model (precision is the forward's autocast, not the storage).
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"backbone {network!r} has tensors outside its state_dict: {left_on_meta[:SHOW_KEYS]}")
    return model.eval()
