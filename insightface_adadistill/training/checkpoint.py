"""Checkpoint sets: arcface_torch-compatible files, written so that a crash never loses the last set.

Layout of `<output>` (arcface_torch spec 2.8 plus our additions):

    model.pt                          rank 0's backbone state_dict, fp32, no `module.` prefix (host)
    checkpoint_gpu_{rank}.pt          host file names: hard links to the newest complete set
    checkpoints/step_{step:09d}/      one folder per saved global step
        checkpoint_gpu_{rank}.pt      one file per rank
        COMPLETE                      written by rank 0 once every rank's file is on disk

The step folders are the source of truth: a set counts only once its `COMPLETE` marker exists, so
a crash during a save leaves the previous complete set as the latest. The top-level files are
re-linked after the marker, for tools that expect the host's names. The output folder must be on a
filesystem shared by all ranks (rank 0 writes the marker for everyone).

Each rank file holds the host keys (`epoch`, `global_step`, `state_dict_backbone`,
`state_dict_softmax_fc`, `state_optimizer`, `state_lr_scheduler`) and ours: `state_grad_scaler`,
`rng_state`, `batch_in_epoch`, `rank`, `world_size`, `num_classes`, `config_name`, `head_extra`,
`head_sharded_keys` and `format_version`. Everything is tensors and plain containers, so it loads
with `weights_only=True`.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.serialization import load_file, save_file_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = "COMPLETE"
SETS_DIR = "checkpoints"
_SET_RE = re.compile(r"^step_(\d{9,})$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_GROUP = 1  # optimizer param group holding the per-class head parameters (see optim.py)


# ----------------------------------------------------------------------------- RNG state

def capture_rng_state() -> Dict[str, Any]:
    """torch CPU, current CUDA device (if CUDA is already in use), numpy and python RNG states.

    numpy's and python's states become int64 tensors so the file stays `weights_only`-loadable.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    # Only when CUDA is initialised: querying it would otherwise create a CUDA context on CPU runs.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Optional[Mapping[str, Any]]) -> None:
    """Inverse of `capture_rng_state`; `None` (e.g. after a world-size change) does nothing."""
    if state is None:
        return
    torch.set_rng_state(state["torch"].cpu())  # a map_location="cuda" load moves it to the GPU
    np_state = state["numpy"]
    np.random.set_state((np_state["bit_generator"], np_state["keys"].cpu().numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"].tolist()), py_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


# ----------------------------------------------------------------------------- building a file

def unwrap_model(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(module, "module", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def backbone_state(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """The backbone's state_dict as the host saves `model.pt`: CPU, fp32, no wrapper prefixes."""
    state = {}
    for key, value in unwrap_model(backbone).state_dict().items():
        for prefix in _WRAPPER_PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        value = value.detach().cpu()
        state[key] = value.float() if value.is_floating_point() else value
    return state


def save_model(backbone: nn.Module, output: str | os.PathLike) -> Path:
    """Write `<output>/model.pt` atomically (call on rank 0 only, as the host does)."""
    return save_file_atomic(backbone_state(backbone), Path(output) / "model.pt")


def make_checkpoint(*, epoch: int, global_step: int, batch_in_epoch: int, backbone: nn.Module,
                    head: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                    grad_scaler: Any, rank: int, world_size: int, num_classes: int, config_name: str,
                    head_extra: Optional[Mapping[str, Any]] = None,
                    head_sharded_keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """One rank's checkpoint dict, all tensors on the CPU.

    Args:
        epoch: completed epochs (host meaning: resume starts epoch index `epoch`).
        batch_in_epoch: batches of epoch index `epoch` already trained (0 at an epoch end).
        head_sharded_keys: head state keys holding one row per local class, re-sharded when the
            world size changes. `None` infers them: tensors whose first dimension is this rank's
            `num_local`. Pass them explicitly if a replicated buffer could have that size too.
    """
    head_state = {k: _to_cpu(v) for k, v in unwrap_model(head).state_dict().items()}
    if head_sharded_keys is None:
        num_local = shard_classes(num_classes, rank, world_size)[1]
        head_sharded_keys = [k for k, v in head_state.items()
                             if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == num_local]
    checkpoint = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "state_dict_backbone": backbone_state(backbone),
        "state_dict_softmax_fc": head_state,
        "state_optimizer": _to_cpu(optimizer.state_dict()),
        "state_lr_scheduler": lr_scheduler.state_dict(),
        "state_grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else {},
        "rng_state": capture_rng_state(),
        "batch_in_epoch": int(batch_in_epoch),
        "rank": int(rank),
        "world_size": int(world_size),
        "num_classes": int(num_classes),
        "config_name": str(config_name),
        "head_extra": _to_cpu(dict(head_extra)) if head_extra is not None else None,
        "head_sharded_keys": list(head_sharded_keys),
        "format_version": FORMAT_VERSION,
    }
    _check_storable(checkpoint, "checkpoint")
    return checkpoint


def restore_checkpoint(checkpoint: Mapping[str, Any], *, backbone: nn.Module, head: nn.Module,
                       optimizer: torch.optim.Optimizer, lr_scheduler: Any, grad_scaler: Any = None) -> None:
    """Load a checkpoint's states into the training objects (the counters stay with the caller).

    The optimizer is loaded before the scheduler, whose construction overwrote the group LRs.
    An empty saved scaler state (fp32 run) leaves `grad_scaler` as it is.
    """
    unwrap_model(backbone).load_state_dict(checkpoint["state_dict_backbone"], strict=True)
    unwrap_model(head).load_state_dict(checkpoint["state_dict_softmax_fc"], strict=True)
    optimizer.load_state_dict(checkpoint["state_optimizer"])
    lr_scheduler.load_state_dict(checkpoint["state_lr_scheduler"])
    if grad_scaler is not None and checkpoint["state_grad_scaler"]:
        grad_scaler.load_state_dict(checkpoint["state_grad_scaler"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


_STORABLE = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device, torch.Size)


def _check_storable(obj: Any, where: str) -> None:
    """Fail at save time, naming the entry, rather than at resume time when weights_only refuses it."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            _check_storable(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_storable(value, f"{where}[{i}]")
    elif not isinstance(obj, _STORABLE):
        raise TypeError(f"{where} is a {type(obj).__name__}, which weights_only loading refuses; "
                        "store tensors, numbers, strings, lists or dicts instead")


# ----------------------------------------------------------------------------- saving a set

def save_checkpoint_set(output: str | os.PathLike, checkpoint: Mapping[str, Any], *,
                        barrier: Optional[Callable[[], None]] = None, keep: int = 2,
                        fingerprint: Optional[Mapping[str, Any]] = None) -> Path:
    """Every rank writes its file into the step folder; rank 0 then marks the set complete.

    Order: rank file (atomic) -> barrier -> rank 0: marker (atomic), top-level links, pruning ->
    barrier. The second barrier makes every rank see the same folder state at its next save.
    A set that is already complete for this global step is left as it is. Save the dict right
    after `make_checkpoint`: its CPU tensors share storage with the live model and optimizer.

    Args:
        checkpoint: this rank's dict from `make_checkpoint` (its `rank`, `world_size` and
            `global_step` name the file and the folder).
        barrier: a collective barrier over all ranks; required when world_size > 1.
        keep: complete sets to keep (older ones are deleted after the new marker).
        fingerprint: identity of the run (config name, network, num_classes, ...), stored in the
            marker and compared by `check_output_dir`.
    """
    rank, world_size, step = checkpoint["rank"], checkpoint["world_size"], checkpoint["global_step"]
    if barrier is None:
        if world_size > 1:
            raise ValueError(f"world_size={world_size}: pass barrier= (e.g. torch.distributed.barrier) "
                             "so the COMPLETE marker is written only after every rank's file")
        barrier = _no_barrier
    if keep < 1:
        raise ValueError(f"keep_checkpoints={keep} must be >= 1: the newest complete set is always kept")
    output = Path(output)
    set_dir = output / SETS_DIR / f"step_{step:09d}"
    if (set_dir / MARKER).is_file():
        # Already complete (e.g. a step save and an epoch-end save at the same global step).
        # Every rank sees the same answer thanks to the trailing barrier; rewriting could leave a
        # marked set whose rank files disagree if a crash hit the rewrite.
        logger.info("checkpoint set %s is already complete; not rewriting it", set_dir)
        return set_dir
    save_file_atomic(checkpoint, set_dir / _rank_file(rank))
    barrier()
    if rank == 0:
        marker = {"global_step": step, "epoch": checkpoint["epoch"], "world_size": world_size,
                  "fingerprint": dict(fingerprint or {}), "format_version": FORMAT_VERSION}
        _check_storable(marker, "fingerprint")
        for stale in _rank_files(set_dir, lambda r: r >= world_size):
            stale.unlink()  # from an earlier, larger run that crashed at this very step
        save_file_atomic(marker, set_dir / MARKER)
        _publish_top_level(output, set_dir, world_size)
        _prune(output, keep)
    barrier()
    return set_dir


def _no_barrier() -> None:
    return None


def _rank_file(rank: int) -> str:
    return f"checkpoint_gpu_{rank}.pt"


def _rank_files(folder: Path, rank_filter: Callable[[int], bool]) -> List[Path]:
    found = []
    for path in folder.glob("checkpoint_gpu_*.pt"):
        suffix = path.stem[len("checkpoint_gpu_"):]
        if suffix.isdigit() and rank_filter(int(suffix)):
            found.append(path)
    return found


def _publish_top_level(output: Path, set_dir: Path, world_size: int) -> None:
    """Point `<output>/checkpoint_gpu_{rank}.pt` at the new set: hard links, copies where unsupported."""
    for rank in range(world_size):
        source, target = set_dir / _rank_file(rank), output / _rank_file(rank)
        tmp = output / f".{_rank_file(rank)}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    for stale in _rank_files(output, lambda r: r >= world_size):
        stale.unlink()


def _prune(output: Path, keep: int) -> None:
    """Delete complete sets beyond the newest `keep`, and incomplete ones older than the newest."""
    complete = list_complete_sets(output)
    keep_dirs = set(complete[-keep:])
    newest = _set_step(complete[-1])
    for set_dir in _set_dirs(output):
        if set_dir not in keep_dirs and _set_step(set_dir) <= newest:
            try:
                shutil.rmtree(set_dir)
            except OSError as exc:  # pruning is housekeeping: the next save retries it
                logger.warning("could not delete old checkpoint set %s: %s", set_dir, exc)


# ----------------------------------------------------------------------------- finding and loading

def _set_dirs(output: Path) -> List[Path]:
    root = output / SETS_DIR
    dirs = [p for p in root.iterdir() if p.is_dir() and _SET_RE.match(p.name)] if root.is_dir() else []
    return sorted(dirs, key=_set_step)


def _set_step(set_dir: Path) -> int:
    return int(_SET_RE.match(set_dir.name).group(1))


def _read_marker(set_dir: Path) -> Optional[Dict[str, Any]]:
    """The marker when the set is complete (marker readable and every rank file present), else None."""
    if not (set_dir / MARKER).is_file():
        return None
    try:
        marker = load_file(set_dir / MARKER)
    except ValueError as exc:
        logger.warning("ignoring checkpoint set %s: unreadable %s marker (%s)", set_dir, MARKER, exc)
        return None
    missing = [r for r in range(marker["world_size"]) if not (set_dir / _rank_file(r)).is_file()]
    if missing:
        logger.warning("ignoring checkpoint set %s: rank files %s are missing", set_dir, missing)
        return None
    return marker


def list_complete_sets(output: str | os.PathLike) -> List[Path]:
    """Complete set folders under `<output>/checkpoints`, oldest first."""
    return [d for d in _set_dirs(Path(output)) if _read_marker(d) is not None]


def find_latest_complete(output: str | os.PathLike) -> Optional[Path]:
    """The newest complete set folder, or None when `output` holds none."""
    complete = list_complete_sets(output)
    return complete[-1] if complete else None


def load_checkpoint_set(path: str | os.PathLike, rank: int, world_size: int,
                        map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """This rank's checkpoint dict from the complete set folder `path`.

    With the saved world size it is this rank's own file. With another world size every rank file
    is loaded on the CPU and re-sharded (`reshard_checkpoint`), so each rank briefly holds the whole
    head in host memory; the result then stays on the CPU whatever `map_location` says.
    """
    path = Path(path)
    marker = _read_marker(path)
    if marker is None:
        raise FileNotFoundError(f"{path}: not a complete checkpoint set (no {MARKER} marker or missing "
                                "rank files); resume from find_latest_complete(output) instead")
    saved_world = marker["world_size"]
    if saved_world == world_size:
        return _load_rank_file(path, rank, marker, map_location)
    # Re-sharding concatenates the whole head: do it in host memory, not on the GPU.
    shards = [_load_rank_file(path, r, marker, "cpu") for r in range(saved_world)]
    logger.warning("checkpoint %s was saved by %d ranks, resuming on %d: re-sharding the head; RNG "
                   "states and head_extra restart", path, saved_world, world_size)
    return reshard_checkpoint(shards, rank, world_size)


def _load_rank_file(set_dir: Path, rank: int, marker: Mapping[str, Any],
                    map_location: str | torch.device) -> Dict[str, Any]:
    file = set_dir / _rank_file(rank)
    checkpoint = load_file(file, map_location=map_location)
    version = checkpoint.get("format_version")
    if version is None or version > FORMAT_VERSION:
        raise ValueError(f"{file}: checkpoint format_version {version} is not supported (this version "
                         f"reads <= {FORMAT_VERSION}); resume with the release that wrote it")
    expected = {"rank": rank, "world_size": marker["world_size"], "global_step": marker["global_step"]}
    wrong = {k: checkpoint[k] for k, v in expected.items() if checkpoint[k] != v}
    if wrong:
        raise ValueError(f"{file}: holds {wrong}, but the set's {MARKER} marker expects {expected}; "
                         "the folder was edited by hand, remove it to fall back to an older set")
    return checkpoint


def reshard_checkpoint(shards: Sequence[Mapping[str, Any]], rank: int, world_size: int) -> Dict[str, Any]:
    """Rebuild `rank`'s checkpoint for `world_size` ranks from all saved rank files (in rank order).

    Per-class tensors (the head's `head_sharded_keys`, and optimizer state of the head group whose
    first dimension is the old shard size) are concatenated in rank order, which gives the global
    class order, then sliced with the arcface_torch shard formula. Replicated state (backbone, its
    optimizer state, the scheduler and the scaler, identical on every rank under DDP) comes from
    rank 0. Per-rank RNG states and `head_extra` cannot be split and restart (None).
    `batch_in_epoch` is rescaled to keep the number of samples seen, assuming the same per-rank
    batch size.
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
    resharded = dict(shards[0])
    resharded.update(
        state_dict_softmax_fc=head,
        state_optimizer=_reshard_optimizer([s["state_optimizer"] for s in shards], old_sizes,
                                           start, num_local),
        rank=rank, world_size=world_size, rng_state=None, head_extra=None,
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


# ----------------------------------------------------------------------------- output folder guard

def check_output_dir(output: str | os.PathLike, fingerprint: Mapping[str, Any],
                     resume: bool) -> Optional[Path]:
    """Decide what a run may do with `output`; return the set to resume from, or None.

    - resume=False: `output` must not hold a previous run (complete sets, `model.pt` or host-style
      `checkpoint_gpu_*.pt`), so a new run never overwrites or mixes with one.
    - resume=True: resume the newest complete set when its fingerprint matches; start from scratch
      (with a warning) when there is none, so a restarted job needs no edited command.
    """
    output = Path(output)
    latest = find_latest_complete(output)
    saved = dict(_read_marker(latest)["fingerprint"]) if latest is not None else None
    host_files = sorted(p.name for p in [output / "model.pt", *_rank_files(output, lambda r: True)]
                        if p.is_file())
    diff = _fingerprint_diff(saved, fingerprint) if saved is not None else {}
    describe = ", ".join(f"{k}: {old!r} saved vs {new!r} now" for k, (old, new) in diff.items())
    if not resume:
        if diff:
            raise FileExistsError(f"{output} holds checkpoints of a different run ({describe}); "
                                  "choose another output folder")
        if latest is not None or host_files:
            found = latest.name if latest is not None else ", ".join(host_files)
            raise FileExistsError(f"{output} already holds a run ({found}); set resume=True to "
                                  "continue it, or choose another output folder")
        return None
    if diff:
        raise ValueError(f"cannot resume from {latest}: it belongs to a different run ({describe}); "
                         "choose another output folder, or restore the config that wrote it")
    if latest is None:
        if _rank_files(output, lambda r: True):
            raise FileExistsError(f"{output} holds checkpoint_gpu_*.pt files but no complete set under "
                                  f"{SETS_DIR}/ (an arcface_torch run?), which cannot be resumed; choose "
                                  "another output folder and start from its model.pt instead")
        logger.warning("resume=True but %s holds no complete checkpoint set: starting from scratch", output)
    return latest


def _fingerprint_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """Keys present in both whose values differ (tuples and lists compare equal)."""
    return {k: (saved[k], current[k]) for k in sorted(saved.keys() & current.keys())
            if _plain(saved[k]) != _plain(current[k])}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
