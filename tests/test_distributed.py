"""distributed.py: sharding, the no-process-group fallbacks, single-process init, and 2 gloo ranks."""
from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dist_utils import run_in_processes
from insightface_adadistill import distributed as D


# ---------------------------------------------------------------- sharding

@pytest.mark.parametrize("num_classes, world_size, expected", [
    (93431, 8, [(0, 11679), (11679, 11679), (23358, 11679), (35037, 11679), (46716, 11679),
                (58395, 11679), (70074, 11679), (81753, 11678)]),  # MS1MV3 on 8 GPUs (host 3.1)
    (85742, 8, [(10718 * r, 10718) for r in range(6)] + [(64308, 10717), (75025, 10717)]),  # MS1MV2
])
def test_shard_classes_matches_host_examples(num_classes, world_size, expected):
    assert [D.shard_classes(num_classes, r, world_size) for r in range(world_size)] == expected


@pytest.mark.parametrize("num_classes, world_size", [(1, 1), (7, 3), (10, 4), (100, 7)])
def test_shards_are_contiguous_and_cover_every_class(num_classes, world_size):
    shards = [D.shard_classes(num_classes, r, world_size) for r in range(world_size)]
    ends = [start + count for start, count in shards]
    assert shards[0][0] == 0 and ends[-1] == num_classes
    assert all(ends[r] == shards[r + 1][0] for r in range(world_size - 1))


def test_shard_classes_rejects_bad_input():
    with pytest.raises(ValueError, match="rank 3"):
        D.shard_classes(10, 3, 3)
    with pytest.raises(ValueError, match="every rank must own"):
        D.shard_classes(2, 0, 4)


# ---------------------------------------------------------------- no process group

def test_helpers_without_process_group():
    assert not dist.is_initialized()
    assert (D.get_rank(), D.get_world_size()) == (0, 1)
    D.barrier()
    D.wait_for_main()
    t = torch.arange(4.0)
    assert D.all_reduce(t) is t
    x = torch.randn(3, 2, requires_grad=True)
    gathered = D.all_gather_tensor(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad
    D.all_gather_with_grad(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 2))
    assert D.broadcast_object({"a": 1}) == {"a": 1}


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_single_process_still_initialises_a_group(no_torchrun_env):
    info = D.init_distributed("cpu")
    try:
        assert info == D.DistInfo(0, 0, 1, torch.device("cpu")) and info.is_main
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        t = torch.ones(2)
        assert torch.equal(D.all_reduce(t), torch.ones(2))
        D.wait_for_main()
        with pytest.raises(RuntimeError, match="already initialised"):
            D.init_distributed("cpu")
    finally:
        D.destroy_distributed()
    assert not dist.is_initialized()


_GROUP_FREED = """
import os, weakref, torch, torch.distributed as dist
from insightface_adadistill import distributed as D
D.init_distributed("cpu")
model = torch.nn.Linear(2, 2)
model(torch.ones(1, 2)).sum().backward()
torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()  # imports torch._dynamo
world = weakref.ref(dist.group.WORLD)
D.destroy_distributed()
print("freed" if world() is None else "alive")
"""


def test_destroy_frees_the_group_after_an_optimizer_step(no_torchrun_env):
    """The gloo worker threads go with the group, so none is left to abort the exit (a fresh interpreter:
    the order of imports is what matters)."""
    result = subprocess.run([sys.executable, "-c", _GROUP_FREED], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.split() == ["freed"], result.stderr


def test_init_rejects_partial_env_and_bad_device(no_torchrun_env, monkeypatch):
    with pytest.raises(ValueError, match="'auto', 'cuda' or 'cpu'"):
        D.init_distributed("tpu")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="LOCAL_RANK"):
        D.init_distributed("cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_PORT", "0")
    with pytest.raises(RuntimeError, match="torchrun --standalone"):
        D.init_distributed("cpu")
    assert not dist.is_initialized()


# ---------------------------------------------------------------- two gloo processes

# No outcome below depends on how fast the machine is: every wait that must succeed has a timeout far
# beyond what it waits for, and the one that must fail waits for a rank that never comes.
MAIN_TIMEOUT_S, WAIT_TIMEOUT_S, GIVE_UP_S = 10.0, 120.0, 3.0


def _two_rank_checks(info: D.DistInfo) -> dict:
    rank, world = info.rank, info.world_size
    out = {"info": info, "rank": D.get_rank(), "world": D.get_world_size()}
    local = torch.full((2, 3), float(rank))
    out["gathered"] = D.all_gather_tensor(local)
    out["summed"] = D.all_reduce(torch.tensor([rank + 1.0]))
    out["object"] = D.broadcast_object({"from": rank})

    # all_gather_with_grad: loss_r = sum(c_r * gathered); d (sum_r loss_r) / d local = sum over r
    # of c_r's chunk, and the backward returns W times that (arcface_torch's convention)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(rank)).requires_grad_()
    coeff = torch.arange(12.0).view(4, 3) * (rank + 1)
    (D.all_gather_with_grad(x) * coeff).sum().backward()
    out["gather_grad"] = x.grad

    # ... and DDP's usual average over ranks undoes the x W: the backbone gets the true gradient
    # of sum_r loss_r with loss_r = sum(c_r * gather(model(x_r))), x_r = rank + 1, c_r = (1, 2) (rank + 1)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(3, 1, bias=False))
    gathered = D.all_gather_with_grad(model(torch.full((1, 3), rank + 1.0)))  # (2, 1)
    (gathered * torch.tensor([[1.0], [2.0]]) * (rank + 1)).sum().backward()
    out["ddp_grad"] = model.module.weight.grad.clone()

    # rank 0 works longer than the main group's timeout; the others wait in wait_for_main, where the side
    # group's (far longer) timeout is the one that counts
    if rank == 0:
        time.sleep(MAIN_TIMEOUT_S + 1.0)
    D.wait_for_main()
    out["after_wait"] = D.all_reduce(torch.ones(1))  # the main group is still usable
    D.barrier()

    # rank 0 never arrives, and stays alive until rank 1 has given up (a timeout, not a lost peer): rank 1
    # gives up after the side group's timeout with a clear message (a short-timeout group stands in for it)
    D._wait_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=GIVE_UP_S))
    store = dist.distributed_c10d._get_default_store()
    if rank == 0:
        store.wait(["gave_up"], datetime.timedelta(seconds=WAIT_TIMEOUT_S))
    else:
        start = time.monotonic()
        try:
            D.wait_for_main()
        except RuntimeError as err:
            out["wait_error"] = (str(err), time.monotonic() - start)
        store.set("gave_up", "1")
    assert world == 2
    return out


@pytest.mark.slow
def test_two_processes():
    results = run_in_processes(_two_rank_checks, 2, init_kwargs={
        "timeout_minutes": MAIN_TIMEOUT_S / 60, "wait_timeout_minutes": WAIT_TIMEOUT_S / 60})
    expected_gather = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    coeff = torch.arange(12.0).view(4, 3)
    for rank, out in enumerate(results):
        assert out["info"] == D.DistInfo(rank, rank, 2, torch.device("cpu"))
        assert (out["rank"], out["world"]) == (rank, 2)
        assert torch.equal(out["gathered"], expected_gather)
        assert torch.equal(out["summed"], torch.tensor([3.0]))
        assert out["object"] == {"from": 0}
        assert torch.equal(out["gather_grad"], 2 * 3 * coeff[2 * rank:2 * rank + 2])  # W x (1 + 2) x chunk
        assert torch.equal(out["ddp_grad"], torch.full((1, 3), 15.0))  # 3 x 1 + 6 x 2: the summed loss's
        assert torch.equal(out["after_wait"], torch.tensor([2.0]))
    message, waited = results[1]["wait_error"]
    assert "gave up waiting for rank 0" in message and "wait_timeout_minutes" in message
    assert GIVE_UP_S - 0.5 < waited < WAIT_TIMEOUT_S  # it gave up on its timeout, and did not hang
