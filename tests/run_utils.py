"""What the end-to-end training and fault tests share: the tiny recipe and exact-resume checks."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import torch

from insightface_adadistill.training.checkpoint import sets as store

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny_cpu.py")
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def latest_states(output: Path, world_size: int = 1) -> List[dict]:
    """Every rank's dict of the newest complete checkpoint set in `output`."""
    latest = store.find_latest_complete(output)
    return [store.load_checkpoint_set(latest, r, world_size) for r in range(world_size)]


def assert_same_states(a: dict, b: dict) -> None:
    """Bit-equal backbone, head and optimizer state at the same global step (exact resume)."""
    for key in ("state_dict_backbone", "state_dict_softmax_fc"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for pa, pb in zip(a["state_optimizer"]["state"].values(), b["state_optimizer"]["state"].values()):
        for name in pa:
            assert torch.equal(pa[name], pb[name]), f"optimizer {name} differs"
    assert a["global_step"] == b["global_step"]
