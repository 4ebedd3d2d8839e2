"""Checkpoint sets on disk, re-sharding, host folders made into sets. A set counts only when its `COMPLETE`
marker (rank 0 writes it last; it records each rank file's size) is readable and every rank file whole."""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from insightface_adadistill.distributed import all_ranks_agree, shard_classes
from insightface_adadistill.errors import UserError
from insightface_adadistill.serialization import load_file, save_file_atomic
from .state import FORMAT_VERSION, HEAD_GROUP, CheckpointError, backbone_state, nbytes, sharded_keys

logger = logging.getLogger(__name__)

MARKER, SETS_DIR, MODEL_FILE = "COMPLETE", "checkpoints", "model.pt"
HOST_KEYS = ("epoch", "global_step", "state_dict_backbone", "state_dict_softmax_fc", "state_optimizer",
             "state_lr_scheduler")
_SET_RE = re.compile(r"^step_(\d{9,})$")


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint set or model.pt could not be written; the previous complete set is intact."""


def rank_file_name(rank: int) -> str:
    return f"checkpoint_gpu_{rank}.pt"


def rank_files(folder: Path, first: int = 0) -> List[Path]:
    """`checkpoint_gpu_{rank}.pt` files in `folder` with rank >= `first`, in rank order."""
    found = {int(p.stem[15:]): p for p in folder.glob("checkpoint_gpu_*.pt") if p.stem[15:].isdigit()}
    return [found[rank] for rank in sorted(found) if rank >= first]


def save_checkpoint_set(output: str | os.PathLike, checkpoint: Mapping[str, Any], *,
                        agree: Optional[Callable[[bool], bool]] = None, keep: int = 2,
                        fingerprint: Optional[Mapping[str, Any]] = None) -> Path:
    """Every rank writes its file -> agree -> rank 0: marker, top-level links, pruning -> agree. `agree`
    (`distributed.all_ranks_agree`) makes every rank raise `CheckpointSaveError` when one cannot write.
    A complete set of this step is left as it is (e.g. a step save and an epoch-end save at one step)."""
    rank, world_size, step = checkpoint["rank"], checkpoint["world_size"], checkpoint["global_step"]
    if agree is None and world_size > 1:
        raise ValueError(f"world_size={world_size}: pass agree= (an all-ranks collective), so that the "
                         "COMPLETE marker follows every rank's file")
    agree, output = agree or (lambda ok: ok), Path(output)
    set_dir = output / SETS_DIR / f"step_{step:09d}"
    complete = read_marker(set_dir, warn=False) is not None
    stale_marker = not complete and (set_dir / MARKER).is_file()
    agree(True)  # every rank has looked before anyone changes the folder
    if complete:  # a crashed rewrite could mix old and new rank files
        logger.info("checkpoint set %s is already complete; not rewriting it", set_dir)
        return set_dir
    if stale_marker:
        if rank == 0:
            (set_dir / MARKER).unlink()
        agree(True)
    error = _try_write(checkpoint, set_dir / rank_file_name(rank), nbytes(checkpoint) * world_size)
    if not agree(error is None):
        if rank == 0 and not (set_dir / MARKER).is_file():
            shutil.rmtree(set_dir, ignore_errors=True)  # give the space back
        raise error or CheckpointSaveError(f"another rank could not write its file of {set_dir} (see its "
                                           f"message); {_intact(output)}")
    if rank == 0:
        error = _try_finish(output, set_dir, checkpoint, fingerprint or {}, keep)
    if not agree(error is None):
        raise error or CheckpointSaveError(f"rank 0 could not complete {set_dir} (see its message); {_intact(output)}")
    return set_dir


def _try_write(obj: Any, path: Path, set_nbytes: int) -> Optional[CheckpointSaveError]:
    """`save_file_atomic`, with an OSError turned into the message a person can act on."""
    try:
        save_file_atomic(obj, path)
        return None
    except OSError as exc:
        folder = path.parent
        intact = _intact(folder.parent.parent if folder.parent.name == SETS_DIR else folder)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return CheckpointSaveError(f"cannot write {path} ({exc.strerror or exc}); {intact}")
        free = shutil.disk_usage(next(p for p in [folder, *folder.parents] if p.exists())).free
        return CheckpointSaveError(
            f"no space left on the disk of {folder} while writing {path.name}: the checkpoint set needs about "
            f"{set_nbytes / 2 ** 20:.1f} MiB ({free / 2 ** 20:.1f} MiB free). {intact}. Free some space (or lower "
            "keep_checkpoints), then resume with --set resume=True")


def _try_finish(output: Path, set_dir: Path, checkpoint: Mapping[str, Any], fingerprint: Mapping[str, Any],
                keep: int) -> Optional[CheckpointSaveError]:
    world_size, sizes = checkpoint["world_size"], {}
    try:
        for name in map(rank_file_name, range(world_size)):  # opening makes NFS revalidate another node's size
            with open(set_dir / name, "rb") as fh:
                sizes[name] = os.fstat(fh.fileno()).st_size
        for stale in rank_files(set_dir, world_size):
            stale.unlink()  # from an earlier, larger run that crashed at this very step
    except OSError as exc:  # every rank must hear about it at the next agreement
        return CheckpointSaveError(f"cannot complete {set_dir} ({exc}); {_intact(output)}")
    marker = {"global_step": checkpoint["global_step"], "epoch": checkpoint["epoch"], "world_size": world_size,
              "fingerprint": dict(fingerprint), "files": sizes, "format_version": FORMAT_VERSION}
    if (error := _try_write(marker, set_dir / MARKER, 4096)) is None:
        try:
            _publish_top_level(output, set_dir, world_size)
        except OSError as exc:  # the set is complete; only the host-name links are behind
            logger.warning("could not link the host file names to %s: %s", set_dir, exc)
        _prune(output, keep)
    return error


def _intact(output: Path) -> str:
    previous = find_latest_complete(output) if output.is_dir() else None
    return f"the previous complete checkpoint set {previous} is intact" if previous else \
        "no earlier complete checkpoint set exists in this folder"


def save_model(backbone: nn.Module, output: str | os.PathLike) -> Path:
    """Write `<output>/model.pt` atomically (call on rank 0 only, as the host does)."""
    state, path = backbone_state(backbone), Path(output) / MODEL_FILE
    if (error := _try_write(state, path, nbytes(state))) is not None:
        raise error
    return path


def _publish_top_level(output: Path, set_dir: Path, world_size: int) -> None:
    """Point `<output>/checkpoint_gpu_{rank}.pt` at the new set: hard links, copies where unsupported."""
    for name in map(rank_file_name, range(world_size)):
        tmp = output / f".{name}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(set_dir / name, tmp)
        except OSError:
            shutil.copyfile(set_dir / name, tmp)
        os.replace(tmp, output / name)
    for stale in rank_files(output, world_size):
        stale.unlink()


def _prune(output: Path, keep: int) -> None:
    """Delete complete sets beyond the newest `keep`, and incomplete ones older than the newest."""
    complete = list_complete_sets(output, warn=False)
    for set_dir in _set_dirs(output):
        if set_dir not in complete[-keep:] and set_step(set_dir) <= set_step(complete[-1]):
            try:
                shutil.rmtree(set_dir)
            except OSError as exc:  # pruning is housekeeping: the next save retries it
                logger.warning("could not delete old checkpoint set %s: %s", set_dir, exc)


def _set_dirs(output: Path) -> List[Path]:
    return sorted((p for p in (output / SETS_DIR).glob("step_*") if _SET_RE.match(p.name) and p.is_dir()), key=set_step)


def set_step(set_dir: Path) -> int:
    return int(_SET_RE.match(set_dir.name).group(1))


def read_marker(set_dir: Path, warn: bool = True) -> Optional[Dict[str, Any]]:
    """The marker when the set is complete (marker readable, every rank file whole), else None."""
    if not (set_dir / MARKER).is_file():
        return None
    try:
        marker = load_file(set_dir / MARKER)
    except ValueError as exc:
        return _ignore(warn, set_dir, f"its {MARKER} marker is unreadable ({exc})")
    for file in (set_dir / rank_file_name(rank) for rank in range(marker["world_size"])):
        expected = marker.get("files", {}).get(file.name)
        if not file.is_file():
            return _ignore(warn, set_dir, f"{file} is missing")
        if expected is not None and file.stat().st_size != expected:
            return _ignore(warn, set_dir, f"{file} is truncated or was replaced ({file.stat().st_size} bytes, "
                                          f"the marker recorded {expected})")
        if not zipfile.is_zipfile(file):  # torch.save's zip archive ends with its central directory
            return _ignore(warn, set_dir, f"{file} is truncated or corrupt (not a complete torch zip archive)")
    return marker


def _ignore(warn: bool, set_dir: Path, why: str) -> None:
    if warn:
        logger.warning("ignoring checkpoint set %s: %s; falling back to the previous complete set", set_dir, why)


def list_complete_sets(output: str | os.PathLike, warn: bool = True) -> List[Path]:
    """Complete set folders under `<output>/checkpoints`, oldest first."""
    return [d for d in _set_dirs(Path(output)) if read_marker(d, warn) is not None]


def find_latest_complete(output: str | os.PathLike, warn: bool = False) -> Optional[Path]:
    """The newest complete set folder, or None; with `warn`, each newer broken set is named."""
    return (list_complete_sets(output, warn) or [None])[-1]


def load_checkpoint_set(path: str | os.PathLike, rank: int, world_size: int, map_location: Any = "cpu",
                        batch_size: Optional[int] = None) -> Dict[str, Any]:
    """This rank's dict from the complete set `path`, re-sharded on the CPU for another world size, with
    `batch_in_epoch` rescaled to the samples seen when world size x `batch_size` (default: saved) changed."""
    if (marker := read_marker(path := Path(path), warn=False)) is None:
        raise CheckpointError(f"{path}: not a complete checkpoint set (no {MARKER} marker, or rank files missing "
                              "or truncated); resume from find_latest_complete(output) instead")
    if (saved_world := marker["world_size"]) == world_size:
        checkpoint = _load_rank_file(path, rank, marker, map_location)
    else:
        logger.warning("checkpoint %s was saved by %d ranks, resuming on %d: re-sharding the head; RNG "
                       "states and head_extra restart", path, saved_world, world_size)
        checkpoint = reshard_checkpoint([_load_rank_file(path, r, marker, "cpu") for r in range(saved_world)],
                                        rank, world_size)
    saved_batch = marker["fingerprint"].get("batch_size") or batch_size or 1  # unknown: the same as now
    checkpoint["batch_in_epoch"] = (checkpoint.get("batch_in_epoch", 0) * saved_world * saved_batch
                                    // (world_size * (batch_size or saved_batch)))
    return checkpoint


def _load_rank_file(set_dir: Path, rank: int, marker: Mapping[str, Any], map_location: Any) -> Dict[str, Any]:
    checkpoint = load_file(file := set_dir / rank_file_name(rank), map_location=map_location)
    expected = {"rank": rank, "world_size": marker["world_size"], "global_step": marker["global_step"],
                "format_version": FORMAT_VERSION}
    if wrong := {k: checkpoint.get(k) for k, v in expected.items() if checkpoint.get(k) != v}:
        raise CheckpointError(f"{file}: holds {wrong}, but the set's {MARKER} marker expects {expected}; the folder "
                              "was edited by hand, remove it to fall back to an older set")
    return checkpoint


def reshard_checkpoint(shards: Sequence[Mapping[str, Any]], rank: int, world_size: int) -> Dict[str, Any]:
    """`rank`'s checkpoint for `world_size` ranks from every saved rank file (arcface_torch cannot, #1811):
    per-class tensors are concatenated in rank order and sliced again, replicated ones come from rank 0,
    per-rank states (RNG, `head_extra`, a partial gradient, optimizer entries of neither kind) restart."""
    num_classes, old_world = shards[0]["num_classes"], len(shards)
    old_sizes = [shard_classes(num_classes, r, old_world)[1] for r in range(old_world)]
    start, num_local = shard_classes(num_classes, rank, world_size)

    def split(values: List[Any]) -> Any:  # the new shard, the replicated value, or `split` itself if neither
        if isinstance(values[0], torch.Tensor) and values[0].dim() >= 1 and [v.shape[0] for v in values] == old_sizes:
            return torch.cat(values)[start:start + num_local].clone()
        same = all(v.shape == values[0].shape and torch.equal(v, values[0]) if isinstance(v, torch.Tensor)
                   else v == values[0] for v in values[1:])
        return values[0] if same else split

    head = dict(shards[0]["state_dict_softmax_fc"])
    for key in shards[0]["head_sharded_keys"]:
        parts = [s["state_dict_softmax_fc"][key] for s in shards]
        if [p.shape[0] for p in parts] != old_sizes:
            raise ValueError(f"head state {key!r} has shard sizes {[p.shape[0] for p in parts]}, expected "
                             f"{old_sizes} for num_classes={num_classes} on {old_world} ranks")
        head[key] = split(parts)
    if shards[0].get("accumulated_grads") is not None:
        logger.warning("the set was saved inside gradient accumulation: its partly accumulated "
                       "gradient cannot be re-sharded and is dropped (resume is not exact)")
    groups, param_states = shards[0]["state_optimizer"]["param_groups"], dict(shards[0]["state_optimizer"]["state"])
    for pid in groups[HEAD_GROUP]["params"] if len(groups) > HEAD_GROUP else []:
        per_rank = [s["state_optimizer"]["state"].get(pid) for s in shards]
        param_states[pid] = None if None in per_rank else {n: split([p[n] for p in per_rank]) for n in per_rank[0]}
        if dropped := [name for name, value in (param_states[pid] or {}).items() if value is split]:
            logger.warning("dropping optimizer state of head parameter %s: %r differs across ranks and is not "
                           "per-class", pid, dropped[0])
            param_states[pid] = None
    optimizer = {"state": {k: v for k, v in param_states.items() if v is not None}, "param_groups": groups}
    return {**shards[0], "state_dict_softmax_fc": head, "state_optimizer": optimizer, "rank": rank,
            "world_size": world_size, "rng_state": None, "head_extra": None, "accumulated_grads": None}


def convert_host_checkpoint(output: str | os.PathLike) -> Path:
    """A set made of the host rank files (`HOST_KEYS`) at the top of `output`; what the host never saves
    (loss scale, RNG, sampler) restarts, so the run continues from epoch `epoch` as the host's resume does."""
    if not (files := rank_files(output := Path(output))):
        raise CheckpointError(f"{output} holds no checkpoint_gpu_*.pt files to convert (arcface_torch "
                              "writes them with save_all_states=True)")
    if (existing := find_latest_complete(output)) is not None:
        raise CheckpointError(f"{output} already holds the checkpoint set {existing}: nothing to convert; "
                              "resume with --set resume=True")
    world_size = len(files)
    if [f.name for f in files] != [rank_file_name(r) for r in range(world_size)]:
        raise CheckpointError(f"{output}: rank files {[f.name for f in files]} are not ranks 0..{world_size - 1}; "
                              "copy every rank's file of the host run")
    host = [load_file(f) for f in files]
    for file, checkpoint in zip(files, host):
        missing = [k for k in HOST_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
        if missing or "weight" not in checkpoint["state_dict_softmax_fc"]:
            raise CheckpointError(f"{file}: not an arcface_torch checkpoint (missing "
                                  f"{missing or ['the Partial FC weight of state_dict_softmax_fc']})")
    sizes = [h["state_dict_softmax_fc"]["weight"].shape[0] for h in host]
    num_classes = sum(sizes)
    if sizes != (expected := [shard_classes(num_classes, r, world_size)[1] for r in range(world_size)]):
        raise CheckpointError(f"{output}: the rank files hold {sizes} classes, but {world_size} ranks hold {expected} "
                              f"of num_classes={num_classes}; the files are from different runs")
    fingerprint = {"num_classes": num_classes, "embedding_size": host[0]["state_dict_softmax_fc"]["weight"].shape[1]}
    for rank in reversed(range(world_size)):  # one process writes every rank's file; rank 0 marks the set
        checkpoint = {**{k: host[rank][k] for k in HOST_KEYS}, "state_grad_scaler": {}, "rng_state": None,
                      "batch_in_epoch": 0, "rank": rank, "world_size": world_size, "num_classes": num_classes,
                      "config_name": output.name, "head_extra": None,
                      "head_sharded_keys": sharded_keys(host[rank]["state_dict_softmax_fc"], sizes[rank]),
                      "accumulated_grads": None, "format_version": FORMAT_VERSION}
        set_dir = save_checkpoint_set(output, checkpoint, agree=all_ranks_agree, keep=1, fingerprint=fingerprint)
    return set_dir
