"""`Checkpointer`: one run's checkpoint sets, and what `resume=True` may do with an output folder.

Saving and loading go through `store.py` (every rank takes part); `resume_point` is decided once,
on rank 0, and compares the newest set's config snapshot with this run's (`config/resume.py`).
What is refused and how to override it is listed in docs/safety.md.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from insightface_adadistill import distributed
from insightface_adadistill.config.resume import HARMLESS, compare_configs, describe
from insightface_adadistill.errors import UserError
from insightface_adadistill.outputs import OutputFolderError
from insightface_adadistill.training.checkpoint import CheckpointError, check_storable
from insightface_adadistill.training.state import TrainState
from insightface_adadistill.training.store import (MODEL_FILE, Agree, host_files, list_complete_sets,
                                                   load_checkpoint_set, read_marker, save_checkpoint_set)

logger = logging.getLogger(__name__)

CONVERT_COMMAND = "adadistill convert-host-checkpoint"


class ResumeError(UserError, ValueError):
    """`resume=True` cannot continue what the output folder holds; the message says what to do."""


def all_ranks_agree(device: torch.device) -> Agree:
    """An `Agree` over the default process group: a MIN all-reduce of one flag."""
    def agree(ok: bool) -> bool:
        flag = torch.tensor(float(ok), device=device)
        return bool(distributed.all_reduce(flag, distributed.dist.ReduceOp.MIN).item())
    return agree


class Checkpointer:
    """Saves, finds and loads the checkpoint sets of one run in `output`.

    Args:
        output: the run's output folder.
        fingerprint: the run's resolved config snapshot (`config_snapshot`), stored in every set.
        keep: complete sets to keep.
        agree: all-ranks AND collective (`all_ranks_agree`); None for one process.
    """

    def __init__(self, output: str | os.PathLike, fingerprint: Mapping[str, Any], keep: int,
                 agree: Optional[Agree] = None) -> None:
        self.output, self.fingerprint, self.keep, self.agree = Path(output), dict(fingerprint), keep, agree
        check_storable(self.fingerprint, "fingerprint")  # now, on every rank, not at rank 0's first marker

    def save(self, state: TrainState) -> Path:
        """Write `state` as this rank's file of the set for its global step (every rank calls it)."""
        return save_checkpoint_set(self.output, state.state_dict(), agree=self.agree, keep=self.keep,
                                   fingerprint=self.fingerprint)

    def latest(self) -> Optional[Path]:
        """The newest complete set; newer sets with a missing or truncated file are skipped with a warning."""
        complete = list_complete_sets(self.output)
        return complete[-1] if complete else None

    def load(self, set_dir: Path, state: TrainState, map_location: str | torch.device = "cpu") -> None:
        """Restore `state` from `set_dir` (every rank calls it; re-shards after a world-size change)."""
        error = None
        try:
            state.load_state_dict(load_checkpoint_set(set_dir, state.rank, state.world_size, map_location))
        except (RuntimeError, ValueError, KeyError) as exc:
            error = exc
        if not (self.agree or (lambda ok: ok))(error is None):
            if error is None:
                raise CheckpointError(f"another rank could not load its part of {set_dir} (see its message)")
            raise CheckpointError(f"{set_dir} cannot be loaded into this run: {error}") from error
        saved_batch = read_marker(set_dir, warn=False)["fingerprint"].get("batch_size")
        if saved_batch and saved_batch != self.fingerprint["batch_size"]:
            # keep the samples seen in this epoch (re-sharding already kept them across world sizes)
            state.batch_in_epoch = state.batch_in_epoch * saved_batch // self.fingerprint["batch_size"]
        logger.info("resumed from %s: epoch %d, batch %d, global step %d", set_dir, state.epoch,
                    state.batch_in_epoch, state.global_step)

    def resume_point(self, resume: bool, allow_changes: bool) -> Optional[Path]:
        """The set this run continues from, or None to start from scratch (rank 0 decides).

        Raises:
            OutputFolderError: resume=False, but `output` already holds a run.
            ResumeError: resume=True, but what `output` holds cannot be continued by this config.
        """
        latest, found = self.latest(), host_files(self.output)
        if not resume:
            if latest is not None or found:
                held = latest.name if latest is not None else ", ".join(found)
                raise OutputFolderError(f"{self.output} already holds a run ({held}); set resume=True to "
                                        "continue it, or choose another output folder")
            return None
        if latest is None:
            self._check_nothing_to_lose(found)
            logger.warning("resume=True but %s holds no checkpoint set yet: starting from scratch", self.output)
            return None
        self._check_config(latest, allow_changes)
        return latest

    def _check_nothing_to_lose(self, found: list) -> None:
        """resume=True without a set must not retrain over a finished run or a host run."""
        if any(name.startswith("checkpoint_gpu_") for name in found):
            raise ResumeError(
                f"{self.output} holds arcface_torch checkpoint files ({', '.join(found)}) but no checkpoint "
                f"set of ours. To continue that run here, convert them first: `{CONVERT_COMMAND} "
                f"{self.output}`, then resume. To distil from it instead, start a new output folder with "
                f"teacher_weights={self.output / MODEL_FILE}")
        if MODEL_FILE in found:
            raise ResumeError(
                f"{self.output} holds a finished or interrupted run ({MODEL_FILE}) but no checkpoint set to "
                "resume from (save_every_steps / save_all_states were off), so resume=True would retrain "
                f"and overwrite its {MODEL_FILE}. Choose another output folder for a new run, or move "
                f"{MODEL_FILE} away if you really want to start this folder again")

    def _check_config(self, latest: Path, allow_changes: bool) -> None:
        diff = compare_configs(read_marker(latest, warn=False)["fingerprint"], self.fingerprint)
        if diff.identity:
            raise ResumeError(f"cannot resume {latest}: it was written by a different run "
                              f"({describe(diff.identity)}); restore these values, or choose another "
                              "output folder for the new run")
        if diff.schedule and not allow_changes:
            raise ResumeError(f"resuming {latest} would change the schedule that an uninterrupted run "
                              f"follows ({describe(diff.schedule)}); restore the saved values, or set "
                              "resume_allow_changes=True to continue with the new ones")
        if diff.schedule:
            logger.warning("resume_allow_changes=True: continuing %s with %s", latest, describe(diff.schedule))
        harmless = [change for change in diff.harmless if change[0] != "resume"]
        if harmless:
            logger.info("resuming with changed %s settings: %s", HARMLESS, describe(harmless))
        if diff.unchecked:
            logger.warning("%s predates the saved config snapshot: %s could not be compared with the "
                           "saved run", latest, ", ".join(diff.unchecked))
