"""Checkpointing: everything that saves, loads, re-shards or converts a run (docs/safety.md).

`resume_point` (rank 0) picks the set to continue, `save`/`load` (every rank) write and read a set of
`TrainState`s (`state.py`, `sets.py`). Resume judges each config key by its declared class (`resume=` in
`config/defaults.py`); the teacher weights, teacher cache and data count as schedule keys compared by
content (`CONTENT`, from `cache.content_identity`): a moved file is harmless, a changed one is not.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from insightface_adadistill.config.defaults import HARMLESS, KEYS, known_keys
from insightface_adadistill.distributed import all_ranks_agree
from insightface_adadistill.errors import UserError
from insightface_adadistill.outputs import OutputFolderError
from .sets import (HOST_KEYS, MODEL_FILE, CheckpointSaveError, convert_host_checkpoint, find_latest_complete,
                   load_checkpoint_set, rank_files, read_marker, save_checkpoint_set, save_model)
from .state import CheckpointError, TrainState, check_storable, tree_map

__all__ = ["CONTENT", "HOST_KEYS", "RESUME_RULES", "CheckpointError", "CheckpointSaveError", "ResumeError",
           "TrainState", "compare_configs", "config_snapshot", "convert_host_checkpoint",
           "find_latest_complete", "load", "load_checkpoint_set", "resume_point", "save", "save_model"]
logger = logging.getLogger(__name__)
_plain = functools.partial(tree_map, lambda v, _: v, sequence=list)  # tuples and lists compare equal

RESUME_RULES: Dict[str, str] = {key.name: key.resume for key in KEYS.values()}
CONTENT = {"teacher_weights_sha256": "teacher_weights", "teacher_cache_sha256": "teacher_cache", "rec_sha256": "rec"}
Change = Tuple[str, Any, Any]  # (key, saved value, current value)


class ResumeError(UserError, ValueError):
    """`resume=True` cannot continue what the output folder holds; the message says what to do."""


@dataclass(frozen=True)
class ResumeDiff:
    """Changed keys by class; `unchecked`: keys the saved fingerprint lacks (a converted host set)."""
    identity: List[Change] = field(default_factory=list)
    schedule: List[Change] = field(default_factory=list)
    harmless: List[Change] = field(default_factory=list)
    unchecked: List[str] = field(default_factory=list)


def config_snapshot(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The resolved config as plain values (tuples become lists), for a checkpoint set's marker."""
    return {key: _plain(cfg[key]) for key in known_keys() if key in cfg}


def compare_configs(saved: Mapping[str, Any], current: Mapping[str, Any]) -> ResumeDiff:
    """Classify each key of `current` whose value differs in `saved`; a content hash that differs is a
    schedule change of its path key, shown with both paths."""
    diff = ResumeDiff()
    for key, value in current.items():
        rule, path = RESUME_RULES.get(key), CONTENT.get(key)  # a content key names the path key it hashes
        if (rule or path) and key not in saved:
            diff.unchecked.append(key)
        elif path and saved[key] != value:
            diff.schedule.append((path, *[f"{fp.get(path)} (sha256 {str(fp[key])[:12]})" for fp in (saved, current)]))
        elif rule and _plain(saved[key]) != _plain(value):
            getattr(diff, rule).append((key, saved[key], value))
    return diff


def resume_point(output: Path, fingerprint: Mapping[str, Any], resume: bool, allow_changes: bool,
                 content: Optional[Callable[[], Mapping[str, Any]]] = None) -> Optional[Path]:
    """The set this run continues from, or None to start from scratch (rank 0 decides, before the
    models are built); `content()` gives the `CONTENT` keys, computed only when there is a set to
    compare. Raises `OutputFolderError` (resume=False on a run) or `ResumeError`."""
    output = Path(output)
    latest = find_latest_complete(output, warn=True)
    found = [p.name for p in [output / MODEL_FILE, *rank_files(output)] if p.is_file()]  # the host's files
    if not resume and (latest or found):
        raise OutputFolderError(f"{output} already holds a run ({latest.name if latest else ', '.join(found)}); "
                                "set resume=True to continue it, or choose another output folder")
    if latest is not None:
        current = {**fingerprint, **(content() if content else {})}
        _judge(latest, compare_configs(read_marker(latest, warn=False)["fingerprint"], current), allow_changes)
    elif any(name.startswith("checkpoint_gpu_") for name in found):
        raise ResumeError(
            f"{output} holds arcface_torch checkpoint files ({', '.join(found)}) but no checkpoint set of ours. To "
            f"continue that run here, convert them first: `adadistill convert-host-checkpoint {output}`, then resume. "
            f"To distil from it instead, start a new output folder with teacher_weights={output / MODEL_FILE}")
    elif found:
        raise ResumeError(
            f"{output} holds a finished or interrupted run ({MODEL_FILE}) but no checkpoint set to resume from "
            "(save_every_steps / save_all_states were off), so resume=True would retrain and overwrite its "
            f"{MODEL_FILE}. Choose another output folder for a new run, or move {MODEL_FILE} away if you really "
            "want to start this folder again")
    elif resume:
        logger.warning("resume=True but %s holds no checkpoint set yet: starting from scratch", output)
    return latest


def _judge(latest: Path, diff: ResumeDiff, allow_changes: bool) -> None:
    """Refuse identity changes, and schedule changes without consent; log the rest."""
    def describe(changes: List[Change]) -> str:  # 'lr: 0.1 saved, 0.2 now; batch_size: 128 saved, 64 now'
        return "; ".join(f"{key}: {old!r} saved, {new!r} now" for key, old, new in changes)

    if diff.identity:
        raise ResumeError(f"cannot resume {latest}: it was written by a different run ({describe(diff.identity)}); "
                          "restore these values, or choose another output folder for the new run")
    if diff.schedule and not allow_changes:
        raise ResumeError(f"resuming {latest} would change what an uninterrupted run continues with "
                          f"({describe(diff.schedule)}); restore them, or set resume_allow_changes=True")
    if diff.schedule:
        logger.warning("resume_allow_changes=True: continuing %s with %s", latest, describe(diff.schedule))
    harmless = [change for change in diff.harmless if change[0] != "resume"]
    if harmless:
        logger.info("resuming with changed %s settings: %s", HARMLESS, describe(harmless))
    if diff.unchecked:
        logger.warning("%s does not record %s (e.g. a set converted from arcface_torch, or written before the "
                       "key existed): not compared with this run", latest, ", ".join(diff.unchecked))


def save(state: TrainState, output: Path, keep: int = 2) -> Path:
    """Write `state` as this rank's file of the set for its global step (every rank calls it)."""
    check_storable(state.fingerprint, "fingerprint")  # on every rank, before the first collective
    return save_checkpoint_set(output, state.state_dict(), agree=all_ranks_agree, keep=keep,
                               fingerprint=state.fingerprint)


def load(set_dir: Path, state: TrainState, device: str | torch.device = "cpu") -> None:
    """Restore `state` from `set_dir` on every rank (re-sharded after a world-size change)."""
    try:
        state.load_state_dict(load_checkpoint_set(set_dir, state.rank, state.world_size, device,
                                                  state.fingerprint.get("batch_size")))
        error = None
    except (RuntimeError, ValueError, KeyError) as exc:
        error = exc
    if not all_ranks_agree(error is None):
        raise CheckpointError(f"{set_dir} cannot be loaded into this run: "
                              f"{error or 'another rank could not load its part (see its message)'}") from error
    logger.info("resumed from %s: epoch %d, batch %d, global step %d", set_dir, state.epoch, state.batch_in_epoch,
                state.global_step)
