"""RNG states of one rank (torch CPU and CUDA, numpy, python) as `weights_only`-loadable tensors.

Saved in every rank file (`rng_state`) so that a resumed run draws the same random numbers as an
uninterrupted one; after a world-size change the states cannot be split and restart.
"""
from __future__ import annotations

import random
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch


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
