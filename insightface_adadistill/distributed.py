"""Process-group set-up and the few collectives the heads and the trainer need.

Unlike arcface_torch (NCCL initialised at import, a hard-coded port 12584, CUDA only), nothing
happens at import: `init_distributed` is called by the trainer, picks nccl for CUDA and gloo for
CPU, and also creates a group for a single process (on a free port it picks itself), so one code
path serves every world size. Every helper below also works with no process group at all (rank 0,
world size 1), which is what the unit tests and notebooks get.

Gradient convention, arcface_torch's: `all_gather_with_grad`'s backward returns W times the sum
over ranks of the local chunk's gradient, and DDP averages the backbone's gradients over the W
ranks as usual, so the averaged gradient is that of the global-mean loss. Our heads therefore drop
into the host's loop unchanged, and the host's Partial FC into ours.
"""
from __future__ import annotations

import datetime
import os
import pickle
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: this torch module binds `group.WORLD` into
# default arguments when it is first imported (the optimizer's first step imports it through
# torch._dynamo). Imported after `init_process_group`, it keeps the world group alive past
# `destroy_process_group`; its gloo worker threads then outlive the interpreter and abort the
# process at exit (SIGABRT, "terminate called without an active exception") after a good run.
import torch.distributed.nn  # noqa: F401

from insightface_adadistill.errors import LaunchError, UserError

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_wait_group: Optional[dist.ProcessGroup] = None  # gloo side group of `wait_for_main`, set by init
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, rank on its host, number of processes, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_torchrun_env() -> Tuple[int, int, int] | None:
    present = [name for name in _TORCHRUN_VARS if name in os.environ]
    if not present:
        return None
    if len(present) != len(_TORCHRUN_VARS):
        missing = sorted(set(_TORCHRUN_VARS) - set(present))
        raise LaunchError(f"environment has {present} but not {missing}; launch with torchrun "
                           f"(it sets all of {list(_TORCHRUN_VARS)}) or unset them for one process")
    try:
        rank, local_rank, world_size = (int(os.environ[name]) for name in _TORCHRUN_VARS)
    except ValueError as err:
        raise LaunchError(f"torchrun variables must be integers, got "
                           f"{ {n: os.environ[n] for n in _TORCHRUN_VARS} }") from err
    return rank, local_rank, world_size


def _restart_store(timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store (MASTER_ADDR/MASTER_PORT), namespaced by the restart round.

    After `torchrun --max-restarts` relaunches the workers, the agent's store still holds the dead
    workers' gloo/NCCL addresses under the same keys; a fresh worker may read one before its peer
    overwrites it and fail with "connection refused". A per-round prefix keeps rounds apart.
    """
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"adadistill/round{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError("device='cuda' but torch sees no GPU; use device='cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0,
                     wait_timeout_minutes: float = 240.0) -> DistInfo:
    """Create the process group from torchrun's RANK/LOCAL_RANK/WORLD_SIZE (or one local process).

    `timeout_minutes` bounds every collective of the main group; `wait_timeout_minutes` bounds
    only `wait_for_main`, which runs on a separate gloo group so that long rank-0 work
    (verification) cannot trip the main group's timeout or the NCCL watchdog.
    """
    global _wait_group
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised; call destroy_distributed() first")
    env = _read_torchrun_env()
    rank, local_rank, world_size = env if env is not None else (0, 0, 1)
    info = DistInfo(rank, local_rank, world_size, _pick_device(device, local_rank))
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    backend = "nccl" if info.device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if env is None:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                rank=0, world_size=1, timeout=timeout)
    else:
        if os.environ.get("MASTER_PORT") == "0":  # workers would retry 127.0.0.1:0 for the whole timeout
            raise LaunchError("MASTER_PORT=0 reached the workers; for a free port on one machine use "
                               "`torchrun --standalone`, otherwise pass a real --master_port")
        dist.init_process_group(backend, store=_restart_store(timeout), rank=rank, world_size=world_size,
                                timeout=timeout)
    _wait_group = dist.new_group(backend="gloo",
                                 timeout=datetime.timedelta(minutes=wait_timeout_minutes))
    return info


def destroy_distributed() -> None:
    """Tear the process group down (arcface_torch's train_v2 never does)."""
    global _wait_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _wait_group = None


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def wait_for_main() -> None:
    """Barrier on the long-timeout gloo side group (`init_distributed`): rank 0 may spend minutes
    here first. Without `init_distributed` it falls back to `barrier()`."""
    if get_world_size() == 1:
        return
    if _wait_group is None:
        barrier()
        return
    try:
        dist.barrier(group=_wait_group)
    except RuntimeError as err:
        raise RuntimeError(f"rank {get_rank()} gave up waiting for rank 0 in wait_for_main(); if "
                           f"rank 0 is just slow, raise wait_timeout_minutes of init_distributed") from err


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce that returns its input; the identity for one process."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on every rank -> (W*B, ...) in rank order, detached; every rank must pass the same B."""
    world_size = get_world_size()
    if world_size == 1:
        return tensor.detach()
    # One output buffer filled in place: no per-rank chunks and no concatenating copy.
    gathered = tensor.new_empty((world_size * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_into_tensor(gathered, tensor.detach().contiguous())
    return gathered


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        return all_gather_tensor(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Each rank holds dLoss/d(gathered) through its own class shard only; the sum over ranks
        # is the true gradient. x W because DDP then averages over the W ranks (the host's rule).
        grad = all_reduce(grad.contiguous().clone())
        start = get_rank() * ctx.batch
        return grad[start:start + ctx.batch] * get_world_size()


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (W*B, ...) in rank order, with arcface_torch's gradient convention (module doc)."""
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_ranks_agree(ok: bool) -> bool:
    """True on every rank only if every rank passed True (a collective: every rank must call it).

    A rank that failed (a full disk) then makes every rank stop, instead of the others waiting for
    it in the next collective. The identity for one process.
    """
    if get_world_size() == 1:
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor(float(ok), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def on_main(action: Callable[[], T]) -> T:
    """Run `action` on rank 0 only; every rank returns its result, or raises its exception.

    Decisions about shared folders are made once (no rank sees a half-changed folder), and an
    error on rank 0 stops every rank instead of leaving them waiting in the next collective. An
    exception that cannot travel (does not pickle) reaches the other ranks as a RuntimeError or,
    for a user error, a `UserError` with the same message.
    """
    result, error = None, None
    if get_rank() == 0:
        try:
            result = action()
        except Exception as exc:  # re-raised below, on every rank
            error = exc
    result, sent = broadcast_object((result, None if error is None else _portable(error)))
    if error is not None:
        raise error  # rank 0: its own exception, with its traceback
    if sent is not None:
        raise sent
    return result


def _portable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return (UserError if isinstance(error, UserError) else RuntimeError)(str(error))


def shard_classes(num_classes: int, rank: int, world_size: int) -> Tuple[int, int]:
    """arcface_torch's contiguous class shards: (class_start, num_local) of `rank`.

    num_local = C // W + (1 if rank < C % W else 0);  class_start = (C // W) * rank + min(rank, C % W).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_classes < world_size:
        raise ValueError(f"num_classes={num_classes} is smaller than world_size={world_size}; "
                         f"every rank must own at least one class")
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + (1 if rank < extra else 0)
