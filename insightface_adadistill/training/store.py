"""Checkpoint sets on disk: atomic set writing, the COMPLETE marker, host file names, pruning.

A set is the folder `<output>/checkpoints/step_{step:09d}/` holding one `checkpoint_gpu_{rank}.pt`
per rank and a `COMPLETE` marker that rank 0 writes last, after every rank's file is on disk. The
marker records the step, the world size, the run's config snapshot (`fingerprint`) and each rank
file's size. A set counts only when its marker is readable and every rank file is there with the
recorded size, so a crash or a full disk during a save leaves the previous complete set as the
latest, and a rank file truncated afterwards makes its set fall back to the previous one (with a
warning naming the file). The top-level `checkpoint_gpu_{rank}.pt` are re-linked after the marker,
for arcface_torch's `resume=True`. The output folder must be shared by all ranks.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

from insightface_adadistill.errors import UserError
from insightface_adadistill.serialization import load_file, save_file_atomic
from insightface_adadistill.training.checkpoint import (FORMAT_VERSION, CheckpointError, backbone_state,
                                                        check_storable)
from insightface_adadistill.training.reshard import reshard_checkpoint

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
SETS_DIR = "checkpoints"
MODEL_FILE = "model.pt"
_SET_RE = re.compile(r"^step_(\d{9,})$")
Agree = Callable[[bool], bool]  # every rank passes its own ok; all get True only if all were ok


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint set or model.pt could not be written; the previous complete set is intact."""


def rank_file_name(rank: int) -> str:
    return f"checkpoint_gpu_{rank}.pt"


def rank_files(folder: Path, rank_filter: Callable[[int], bool] = lambda rank: True) -> List[Path]:
    """`checkpoint_gpu_{rank}.pt` files in `folder` whose rank passes the filter, in rank order."""
    found = {}
    for path in folder.glob("checkpoint_gpu_*.pt"):
        suffix = path.stem[len("checkpoint_gpu_"):]
        if suffix.isdigit() and rank_filter(int(suffix)):
            found[int(suffix)] = path
    return [found[rank] for rank in sorted(found)]


def host_files(output: str | os.PathLike) -> List[str]:
    """Names of arcface_torch-style files at the top of `output` (model.pt, checkpoint_gpu_*.pt)."""
    output = Path(output)
    return [p.name for p in [output / MODEL_FILE, *rank_files(output)] if p.is_file()]


# ----------------------------------------------------------------------------- saving

def _alone(ok: bool) -> bool:
    return ok


def save_checkpoint_set(output: str | os.PathLike, checkpoint: Mapping[str, Any], *,
                        agree: Optional[Agree] = None, keep: int = 2,
                        fingerprint: Optional[Mapping[str, Any]] = None) -> Path:
    """Every rank writes its file into the step folder; rank 0 then marks the set complete.

    Order: every rank looks at the folder -> agree -> rank file (atomic) -> agree -> rank 0: marker
    (atomic), top-level links, pruning -> agree. Each `agree` is a collective, so every rank sees
    the same folder state, and a rank that cannot write (disk full) makes every rank raise instead
    of waiting for it. A set already complete for this global step is left as it is; a marked set
    whose files no longer match their marker is rewritten. Save the dict right after building it:
    its CPU tensors share storage with the live model and optimizer.

    Args:
        checkpoint: this rank's dict from `TrainState.state_dict()` (its `rank`, `world_size` and
            `global_step` name the file and the folder).
        agree: all-ranks AND of a flag (a collective); required when world_size > 1.
        keep: complete sets to keep (older ones are deleted after the new marker).
        fingerprint: the run's config snapshot, stored in the marker and compared at resume.

    Raises:
        CheckpointSaveError: a file could not be written (the message names the folder, the
            space needed and the set that is still intact).
    """
    rank, world_size, step = checkpoint["rank"], checkpoint["world_size"], checkpoint["global_step"]
    if agree is None:
        if world_size > 1:
            raise ValueError(f"world_size={world_size}: pass agree= (an all-ranks collective) so the "
                             "COMPLETE marker is written only after every rank's file")
        agree = _alone
    if keep < 1:
        raise ValueError(f"keep_checkpoints={keep} must be >= 1: the newest complete set is always kept")
    output = Path(output)
    set_dir = output / SETS_DIR / f"step_{step:09d}"
    complete = read_marker(set_dir, warn=False) is not None
    stale_marker = not complete and (set_dir / MARKER).is_file()
    agree(True)  # every rank has looked before anyone changes the folder
    if complete:
        # e.g. a step save and an epoch-end save at the same global step; rewriting could leave a
        # marked set whose rank files disagree if a crash hit the rewrite
        logger.info("checkpoint set %s is already complete; not rewriting it", set_dir)
        return set_dir
    if stale_marker:
        if rank == 0:
            (set_dir / MARKER).unlink()
        agree(True)
    error = _try_write(checkpoint, set_dir / rank_file_name(rank), checkpoint_nbytes(checkpoint) * world_size)
    if not agree(error is None):
        _abandon(set_dir, rank)
        raise error or CheckpointSaveError(f"another rank could not write its file of {set_dir} (see its "
                                           f"message); {_intact(output)}")
    if rank == 0:
        error = _try_finish(output, set_dir, checkpoint, fingerprint, keep)
    if not agree(error is None):
        raise error or CheckpointSaveError(f"rank 0 could not complete {set_dir} (see its message); "
                                           f"{_intact(output)}")
    return set_dir


def _try_write(obj: Any, path: Path, set_nbytes: int) -> Optional[CheckpointSaveError]:
    """`save_file_atomic`, with an OSError turned into the message a person can act on."""
    try:
        save_file_atomic(obj, path)
    except OSError as exc:
        return _save_error(exc, path, set_nbytes)
    return None


def _try_finish(output: Path, set_dir: Path, checkpoint: Mapping[str, Any],
                fingerprint: Optional[Mapping[str, Any]], keep: int) -> Optional[CheckpointSaveError]:
    world_size = checkpoint["world_size"]
    try:
        sizes = {rank_file_name(r): _size(set_dir / rank_file_name(r)) for r in range(world_size)}
        for stale in rank_files(set_dir, lambda r: r >= world_size):
            stale.unlink()  # from an earlier, larger run that crashed at this very step
    except OSError as exc:  # every rank must hear about it at the next agreement
        return _save_error(exc, set_dir / MARKER, 4096)
    marker = {"global_step": checkpoint["global_step"], "epoch": checkpoint["epoch"],
              "world_size": world_size, "fingerprint": dict(fingerprint or {}), "files": sizes,
              "format_version": FORMAT_VERSION}
    check_storable(marker, "fingerprint")
    error = _try_write(marker, set_dir / MARKER, 4096)
    if error is None:
        try:
            _publish_top_level(output, set_dir, world_size)
        except OSError as exc:  # the set is complete; only the host-name links are behind
            logger.warning("could not link the host file names to %s: %s", set_dir, exc)
        _prune(output, keep)
    return error


def _size(file: Path) -> int:
    """Size as written by another node: opening first makes NFS revalidate its cached attributes."""
    with open(file, "rb") as fh:
        return os.fstat(fh.fileno()).st_size


def _abandon(set_dir: Path, rank: int) -> None:
    """After a failed write: rank 0 removes the unmarked step folder to give the space back."""
    if rank == 0 and not (set_dir / MARKER).is_file():
        shutil.rmtree(set_dir, ignore_errors=True)


def _save_error(exc: OSError, path: Path, set_nbytes: int) -> CheckpointSaveError:
    folder = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(_existing_parent(folder)).free
        return CheckpointSaveError(
            f"no space left on the disk of {folder} while writing {path.name}: the checkpoint set needs "
            f"about {_mib(set_nbytes)} ({_mib(free)} free). {_intact(_output_of(folder))}. Free some "
            "space (or lower keep_checkpoints), then resume with --set resume=True")
    return CheckpointSaveError(f"cannot write {path} ({exc.strerror or exc}); {_intact(_output_of(folder))}")


def _existing_parent(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _output_of(folder: Path) -> Path:
    return folder.parent.parent if folder.parent.name == SETS_DIR else folder


def _intact(output: Path) -> str:
    previous = find_latest_complete(output) if output.is_dir() else None
    if previous is None:
        return "no earlier complete checkpoint set exists in this folder"
    return f"the previous complete checkpoint set {previous} is intact"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2 ** 20:.1f} MiB"


def checkpoint_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint dict: the size of its file, give or take a few KiB."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(checkpoint_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(checkpoint_nbytes(v) for v in obj)
    return 0


def save_model(backbone: nn.Module, output: str | os.PathLike) -> Path:
    """Write `<output>/model.pt` atomically (call on rank 0 only, as the host does)."""
    state = backbone_state(backbone)
    path = Path(output) / MODEL_FILE
    error = _try_write(state, path, checkpoint_nbytes(state))
    if error is not None:
        raise error
    return path


def _publish_top_level(output: Path, set_dir: Path, world_size: int) -> None:
    """Point `<output>/checkpoint_gpu_{rank}.pt` at the new set: hard links, copies where unsupported."""
    for rank in range(world_size):
        source, target = set_dir / rank_file_name(rank), output / rank_file_name(rank)
        tmp = output / f".{rank_file_name(rank)}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    for stale in rank_files(output, lambda r: r >= world_size):
        stale.unlink()


def _prune(output: Path, keep: int) -> None:
    """Delete complete sets beyond the newest `keep`, and incomplete ones older than the newest."""
    complete = list_complete_sets(output, warn=False)
    keep_dirs = set(complete[-keep:])
    newest = set_step(complete[-1])
    for set_dir in _set_dirs(output):
        if set_dir not in keep_dirs and set_step(set_dir) <= newest:
            try:
                shutil.rmtree(set_dir)
            except OSError as exc:  # pruning is housekeeping: the next save retries it
                logger.warning("could not delete old checkpoint set %s: %s", set_dir, exc)


# ----------------------------------------------------------------------------- finding and loading

def _set_dirs(output: Path) -> List[Path]:
    root = output / SETS_DIR
    dirs = [p for p in root.iterdir() if p.is_dir() and _SET_RE.match(p.name)] if root.is_dir() else []
    return sorted(dirs, key=set_step)


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
    for rank in range(marker["world_size"]):
        problem = _rank_file_problem(set_dir / rank_file_name(rank), marker.get("files", {}))
        if problem:
            return _ignore(warn, set_dir, problem)
    return marker


def _rank_file_problem(file: Path, sizes: Mapping[str, int]) -> Optional[str]:
    """Why a rank file of a marked set cannot be used (missing or truncated), or None."""
    if not file.is_file():
        return f"{file} is missing"
    expected, actual = sizes.get(file.name), file.stat().st_size
    if expected is not None and actual != expected:
        return f"{file} is truncated or was replaced ({actual} bytes, the marker recorded {expected})"
    if not zipfile.is_zipfile(file):  # torch.save's zip archive ends with its central directory
        return f"{file} is truncated or corrupt (not a complete torch zip archive)"
    return None


def _ignore(warn: bool, set_dir: Path, why: str) -> None:
    if warn:
        logger.warning("ignoring checkpoint set %s: %s; falling back to the previous complete set",
                       set_dir, why)
    return None


def list_complete_sets(output: str | os.PathLike, warn: bool = True) -> List[Path]:
    """Complete set folders under `<output>/checkpoints`, oldest first."""
    return [d for d in _set_dirs(Path(output)) if read_marker(d, warn) is not None]


def find_latest_complete(output: str | os.PathLike) -> Optional[Path]:
    """The newest complete set folder, or None when `output` holds none."""
    complete = list_complete_sets(output, warn=False)
    return complete[-1] if complete else None


def load_checkpoint_set(path: str | os.PathLike, rank: int, world_size: int,
                        map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """This rank's checkpoint dict from the complete set folder `path`.

    With the saved world size it is this rank's own file. With another world size every rank file
    is loaded on the CPU and re-sharded (`reshard_checkpoint`), so each rank briefly holds the whole
    head in host memory; the result then stays on the CPU whatever `map_location` says.
    """
    path = Path(path)
    marker = read_marker(path, warn=False)
    if marker is None:
        raise CheckpointError(f"{path}: not a complete checkpoint set (no {MARKER} marker, or rank files "
                              "missing or truncated); resume from find_latest_complete(output) instead")
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
    file = set_dir / rank_file_name(rank)
    checkpoint = load_file(file, map_location=map_location)
    version = checkpoint.get("format_version")
    if version is None or version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format_version {version} is not supported (this version "
                              f"reads <= {FORMAT_VERSION}); resume with the release that wrote it")
    expected = {"rank": rank, "world_size": marker["world_size"], "global_step": marker["global_step"]}
    wrong = {k: checkpoint[k] for k, v in expected.items() if checkpoint[k] != v}
    if wrong:
        raise CheckpointError(f"{file}: holds {wrong}, but the set's {MARKER} marker expects {expected}; "
                              "the folder was edited by hand, remove it to fall back to an older set")
    return checkpoint
