"""Checkpoint sets: round trip, crash safety, pruning, re-sharding across world sizes, output guard.

Multi-rank saves run as threads sharing a `threading.Barrier`, which is what the collective
barrier guarantees between processes.
"""
from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest
import torch
from torch import nn

from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.serialization import load_file, save_file_atomic
from insightface_adadistill.training.checkpoint import (
    capture_rng_state, check_output_dir, find_latest_complete, list_complete_sets,
    load_checkpoint_set, make_checkpoint, restore_checkpoint, restore_rng_state, save_checkpoint_set,
    save_model)
from insightface_adadistill.training.optim import build_optimizer, trainable_param_groups
from insightface_adadistill.training.schedule import PolynomialWarmupLR

EMB = 3
NUM_CLASSES = 5


class ShardedHead(nn.Module):
    """Partial-FC-like: per-class weight (C_local, E) and `visited` buffer, one replicated buffer."""

    def __init__(self, num_local: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_local, EMB))
        self.register_buffer("visited", torch.zeros(num_local, dtype=torch.bool))
        self.register_buffer("scale", torch.tensor(64.0))


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model sits in `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def _training_objects(rank: int, world_size: int, steps: int = 1):
    """Objects for `rank`: head rows hold their global class id, so shards can be checked by value."""
    torch.manual_seed(1)  # identical backbones on every rank, as DDP makes them
    backbone = nn.Sequential(nn.Linear(4, EMB), nn.BatchNorm1d(EMB))
    start, num_local = shard_classes(NUM_CLASSES, rank, world_size)
    head = ShardedHead(num_local)
    optimizer = build_optimizer("sgd", trainable_param_groups(backbone, head), lr=0.1)
    scheduler = PolynomialWarmupLR(optimizer, warmup_steps=1, total_steps=10)
    class_ids = torch.arange(start, start + num_local, dtype=torch.float32)
    for _ in range(steps):
        backbone(torch.ones(2, 4)).sum().backward()
        head.weight.grad = class_ids[:, None].expand(num_local, EMB).clone()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        head.weight.copy_(class_ids[:, None].expand(num_local, EMB))
        head.visited.copy_(class_ids % 2 == 0)
    return backbone, head, optimizer, scheduler


def _checkpoint(rank: int, world_size: int, step: int = 7, head_extra=None) -> dict:
    backbone, head, optimizer, scheduler = _training_objects(rank, world_size)
    return make_checkpoint(
        epoch=1, global_step=step, batch_in_epoch=4, backbone=Wrapper(backbone), head=head,
        optimizer=optimizer, lr_scheduler=scheduler, grad_scaler=torch.amp.GradScaler("cpu"),
        rank=rank, world_size=world_size, num_classes=NUM_CLASSES, config_name="tiny",
        head_extra=head_extra or {"sampler_seed": 3})


def _save_set(output, world_size: int, step: int, keep: int = 2, fingerprint=None, crash_rank=None):
    """Save one set from `world_size` threads; `crash_rank` dies at the barrier after its file."""
    checkpoints = [_checkpoint(r, world_size, step) for r in range(world_size)]
    barrier = threading.Barrier(world_size)
    errors = []

    def run(rank: int) -> None:
        def wait() -> None:
            if rank == crash_rank:
                raise RuntimeError("simulated crash")
            barrier.wait(timeout=10)
        try:
            save_checkpoint_set(output, checkpoints[rank], barrier=wait, keep=keep, fingerprint=fingerprint)
        except (RuntimeError, threading.BrokenBarrierError) as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors and crash_rank is None:
        raise errors[0]
    return checkpoints


def _assert_equal(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_round_trip_single_rank(tmp_path):
    saved = _save_set(tmp_path, world_size=1, step=7)[0]
    latest = find_latest_complete(tmp_path)
    assert latest == tmp_path / "checkpoints" / "step_000000007"
    loaded = load_checkpoint_set(latest, rank=0, world_size=1)
    _assert_equal(saved, loaded)
    host_keys = {"epoch", "global_step", "state_dict_backbone", "state_dict_softmax_fc",
                 "state_optimizer", "state_lr_scheduler"}
    assert host_keys <= loaded.keys() and loaded["head_sharded_keys"] == ["weight", "visited"]
    assert all(not k.startswith("module.") for k in loaded["state_dict_backbone"])
    # The host's top-level name is a hard link to the newest set.
    assert os.path.samefile(tmp_path / "checkpoint_gpu_0.pt", latest / "checkpoint_gpu_0.pt")

    backbone, head, optimizer, scheduler = _training_objects(0, 1, steps=0)
    restore_checkpoint(loaded, backbone=Wrapper(backbone), head=head, optimizer=optimizer,
                       lr_scheduler=scheduler, grad_scaler=torch.amp.GradScaler("cpu"))
    _assert_equal(saved["state_optimizer"], optimizer.state_dict())
    assert scheduler.state_dict() == saved["state_lr_scheduler"]
    assert torch.equal(head.weight, saved["state_dict_softmax_fc"]["weight"])


def test_rng_state_round_trip(tmp_path):
    save_file_atomic(capture_rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_file(tmp_path / "rng.pt"))
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2]
    restore_rng_state(None)  # after a world-size change: nothing to restore


def test_crash_mid_save_falls_back_to_previous_set(tmp_path):
    _save_set(tmp_path, world_size=2, step=100)
    _save_set(tmp_path, world_size=2, step=200, crash_rank=1)
    partial = tmp_path / "checkpoints" / "step_000000200"
    assert (partial / "checkpoint_gpu_0.pt").is_file() and not (partial / "COMPLETE").exists()
    assert find_latest_complete(tmp_path) == tmp_path / "checkpoints" / "step_000000100"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint set"):
        load_checkpoint_set(partial, rank=0, world_size=2)
    assert load_file(tmp_path / "checkpoint_gpu_1.pt")["global_step"] == 100


def test_keeps_last_k_complete_sets_and_drops_older_partials(tmp_path):
    _save_set(tmp_path, world_size=1, step=1, keep=2)
    _save_set(tmp_path, world_size=2, step=2, crash_rank=1)  # partial leftover
    for step in (3, 4, 5):
        _save_set(tmp_path, world_size=1, step=step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000000004", "step_000000005"]
    assert [p.name for p in list_complete_sets(tmp_path)] == names
    assert not (tmp_path / "checkpoint_gpu_1.pt").exists()  # no stale top-level rank files


def test_a_complete_set_is_not_rewritten(tmp_path):
    first = _save_set(tmp_path, world_size=1, step=6)[0]
    again = _checkpoint(0, 1, step=6, head_extra={"sampler_seed": 99})
    save_checkpoint_set(tmp_path, again)
    loaded = load_checkpoint_set(find_latest_complete(tmp_path), rank=0, world_size=1)
    assert loaded["head_extra"] == first["head_extra"] == {"sampler_seed": 3}


@pytest.mark.parametrize("old_world,new_world", [(2, 1), (1, 2), (2, 3)])
def test_reshards_head_and_optimizer_state_across_world_sizes(tmp_path, old_world, new_world):
    saved = _save_set(tmp_path, world_size=old_world, step=9)
    latest = find_latest_complete(tmp_path)
    all_ids = torch.arange(NUM_CLASSES, dtype=torch.float32)
    for rank in range(new_world):
        loaded = load_checkpoint_set(latest, rank=rank, world_size=new_world)
        start, num_local = shard_classes(NUM_CLASSES, rank, new_world)
        ids = all_ids[start:start + num_local]
        head = loaded["state_dict_softmax_fc"]
        assert torch.equal(head["weight"], ids[:, None].expand(num_local, EMB))
        assert torch.equal(head["visited"], ids % 2 == 0)
        assert torch.equal(head["scale"], torch.tensor(64.0))
        head_pid = loaded["state_optimizer"]["param_groups"][1]["params"][0]
        momentum = loaded["state_optimizer"]["state"][head_pid]["momentum_buffer"]
        assert torch.equal(momentum, ids[:, None].expand(num_local, EMB))
        _assert_equal(loaded["state_dict_backbone"], saved[0]["state_dict_backbone"])
        assert (loaded["rank"], loaded["world_size"], loaded["rng_state"]) == (rank, new_world, None)
        assert loaded["batch_in_epoch"] == 4 * old_world // new_world

        backbone, head_module, optimizer, scheduler = _training_objects(rank, new_world, steps=0)
        restore_checkpoint(loaded, backbone=backbone, head=head_module, optimizer=optimizer,
                           lr_scheduler=scheduler)


def test_check_output_dir(tmp_path):
    run = {"config_name": "tiny", "network": "mbf", "num_classes": NUM_CLASSES,
           "margin_list": (1.0, 0.5, 0.0)}
    assert check_output_dir(tmp_path, run, resume=False) is None
    assert check_output_dir(tmp_path, run, resume=True) is None  # nothing yet: start from scratch
    _save_set(tmp_path, world_size=1, step=3, fingerprint=run)
    with pytest.raises(FileExistsError, match="set resume=True"):
        check_output_dir(tmp_path, run, resume=False)
    other = {**run, "num_classes": 10}
    with pytest.raises(FileExistsError, match="different run.*num_classes: 5 saved vs 10 now"):
        check_output_dir(tmp_path, other, resume=False)
    with pytest.raises(ValueError, match="cannot resume"):
        check_output_dir(tmp_path, other, resume=True)
    same_as_list = {**run, "margin_list": [1.0, 0.5, 0.0]}
    assert check_output_dir(tmp_path, same_as_list, resume=True) == find_latest_complete(tmp_path)


def test_check_output_dir_refuses_host_files(tmp_path):
    save_model(nn.Linear(2, 2), tmp_path)
    with pytest.raises(FileExistsError, match="model.pt"):
        check_output_dir(tmp_path, {}, resume=False)
    assert check_output_dir(tmp_path, {}, resume=True) is None
    torch.save({"epoch": 1}, tmp_path / "checkpoint_gpu_0.pt")
    with pytest.raises(FileExistsError, match="arcface_torch"):
        check_output_dir(tmp_path, {}, resume=True)


def test_save_model_is_plain_fp32_without_prefix(tmp_path):
    backbone = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).to(torch.bfloat16)
    state = load_file(save_model(Wrapper(backbone), tmp_path))
    assert set(state) == set(backbone.state_dict())
    assert state["0.weight"].dtype == torch.float32
    assert state["1.num_batches_tracked"].dtype == torch.int64


def test_unsafe_values_and_missing_barrier_fail_at_save_time(tmp_path):
    with pytest.raises(TypeError, match=r"head_extra.*'gen'.*Generator"):
        _checkpoint(0, 1, head_extra={"gen": torch.Generator()})
    with pytest.raises(ValueError, match="barrier"):
        save_checkpoint_set(tmp_path, _checkpoint(0, 2), barrier=None)


def _gloo_save(rank: int, world_size: int, output: str) -> None:
    import torch.distributed as dist

    from insightface_adadistill.distributed import barrier
    dist.init_process_group("gloo", init_method=f"file://{output}/rendezvous", rank=rank,
                            world_size=world_size)
    try:
        for step in (10, 20, 30):
            save_checkpoint_set(output, _checkpoint(rank, world_size, step), barrier=barrier, keep=2)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_write_one_set(tmp_path):
    torch.multiprocessing.spawn(_gloo_save, args=(2, str(tmp_path)), nprocs=2, join=True)
    assert [p.name for p in list_complete_sets(tmp_path)] == ["step_000000020", "step_000000030"]
    for rank in range(2):
        loaded = load_checkpoint_set(find_latest_complete(tmp_path), rank=rank, world_size=2)
        assert loaded["global_step"] == 30 and loaded["rank"] == rank
