"""Run a function in N local gloo processes and collect what each rank returns.

`run_in_processes(fn, world_size, *args)` spawns `world_size` processes with torchrun's variables
set, calls `init_distributed("cpu", **init_kwargs)` in each, then `fn(info, *args)`, and returns the
per-rank results in rank order. `fn` must be a module-level function (it is pickled by name).
Spawning costs seconds, so group many checks into one function per world size.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.multiprocessing as mp

from insightface_adadistill.distributed import DistInfo, destroy_distributed, init_distributed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str,
            start_line: Any, init_kwargs: Dict[str, Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start_line.wait()  # every rank has imported torch: the rendezvous below runs without skew
    info = init_distributed("cpu", **init_kwargs)
    try:
        result = fn(info, *args)
    finally:
        destroy_distributed()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run_in_processes(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0,
                     init_kwargs: Optional[Dict[str, Any]] = None) -> List[Any]:
    """[fn(info_0, *args), ..., fn(info_{W-1}, *args)] computed in W spawned gloo processes."""
    start_line = mp.get_context("spawn").Barrier(world_size)  # referenced until the children are done
    with tempfile.TemporaryDirectory() as out_dir:
        processes = mp.start_processes(
            _worker, args=(fn, world_size, _free_port(), out_dir, start_line, init_kwargs or {}, args),
            nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not processes.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in processes.processes:
                    if process.is_alive():
                        process.terminate()
                raise TimeoutError(f"{fn.__name__} did not finish in {timeout_s} s on {world_size} processes")
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


__all__ = ["DistInfo", "run_in_processes"]
