"""Run `adadistill ARGS...` with a `kill -9` planted in one phase of the N-th checkpoint save.

    python tests/fault_launch.py PHASE N ARGS...

PHASE is where the process kills itself (SIGKILL, no cleanup runs), in save order:
    rank_file      while writing its rank file (a partial temporary file is left behind)
    before_marker  after every rank file, before the COMPLETE marker
    before_links   after the marker, before the host names checkpoint_gpu_*.pt are re-linked
    pruning        while deleting an old set (half of it is gone), at the N-th save that prunes
    step           in the middle of the N-th training step: after the forward, before the backward
                   and the optimizer step (the run is provably still training when it dies)
FAULT_RANK (default 0) names the one rank that dies; where FAULT_ONCE names a file, the fault fires
only while that file does not exist and creates it first, so a process restarted by torchrun runs
on. Used by tests/test_faults.py; it patches only the test process, never the package.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from insightface_adadistill.cli import main
from insightface_adadistill.training.checkpoint import sets as store
from insightface_adadistill.training.step import DistillStep


def _die() -> None:
    once = os.environ.get("FAULT_ONCE")
    if once:
        if Path(once).exists():
            return
        Path(once).touch()
    os.kill(os.getpid(), signal.SIGKILL)


def _nth_call(nth: int):
    calls = [0]

    def reached() -> bool:
        calls[0] += 1
        return calls[0] == nth
    return reached


def plant(phase: str, nth: int) -> None:
    reached = _nth_call(nth)
    real_save, real_publish, real_prune = store.save_file_atomic, store._publish_top_level, store._prune

    def save(obj, path: Path):
        if phase == "rank_file" and path.name.startswith("checkpoint_gpu_") and reached():
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / f".{path.name}.partial.tmp").write_bytes(b"PK\x03\x04" + bytes(4096))
            _die()
        if phase == "before_marker" and path.name == store.MARKER and reached():
            _die()
        return real_save(obj, path)

    def publish(output: Path, set_dir: Path, world_size: int) -> None:
        if phase == "before_links" and reached():
            _die()
        real_publish(output, set_dir, world_size)

    def prune(output: Path, keep: int) -> None:
        complete = store.list_complete_sets(output, warn=False)
        if phase == "pruning" and len(complete) > keep and reached():
            (complete[0] / store.rank_file_name(0)).unlink()
            _die()
        real_prune(output, keep)

    real_forward = DistillStep.forward

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if phase == "step" and reached():
            _die()
        return out

    store.save_file_atomic, store._publish_top_level, store._prune = save, publish, prune
    DistillStep.forward = forward


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) == int(os.environ.get("FAULT_RANK", "0")):
        plant(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
