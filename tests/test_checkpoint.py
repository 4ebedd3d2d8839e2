"""Checkpoint sets: round trip, crash safety, truncation, disk full, pruning, re-sharding, host layouts.

Multi-rank saves run as threads sharing an all-ranks `agree` built on a `threading.Barrier`,
which is what the collective guarantees between processes.
"""
from __future__ import annotations

import errno
import os
import random
import threading

import numpy as np
import pytest
import torch
from torch import nn

from insightface_adadistill.distributed import shard_classes
from insightface_adadistill.serialization import load_file, save_file_atomic
from insightface_adadistill.distributed import all_ranks_agree
from insightface_adadistill.training.checkpoint import sets
from insightface_adadistill.training.checkpoint.sets import (CheckpointSaveError, find_latest_complete,
                                                             list_complete_sets, load_checkpoint_set,
                                                             save_checkpoint_set, save_model)
from insightface_adadistill.training.checkpoint.state import (CheckpointError, TrainState, capture_rng_state,
                                                              restore_rng_state)
from insightface_adadistill.training.optim import build_optimizer, host_param_groups
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
        self.sampler_seed = torch.tensor(3)

    def sampler_state(self) -> torch.Tensor:
        return self.sampler_seed

    def load_sampler_state(self, state: torch.Tensor) -> None:
        self.sampler_seed = state


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model sits in `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _training_objects(rank: int, world_size: int, steps: int = 1):
    """Objects for `rank`: head rows hold their global class id, so shards can be checked by value."""
    torch.manual_seed(1)  # identical backbones on every rank, as DDP makes them
    backbone = nn.Sequential(nn.Linear(4, EMB), nn.BatchNorm1d(EMB))
    start, num_local = shard_classes(NUM_CLASSES, rank, world_size)
    head = ShardedHead(num_local)
    optimizer = build_optimizer("sgd", host_param_groups(backbone, head), lr=0.1)
    scheduler = PolynomialWarmupLR(optimizer, warmup_steps=1, total_steps=10)
    class_ids = torch.arange(start, start + num_local, dtype=torch.float32)
    for _ in range(steps):
        backbone(torch.ones(2, 4)).sum().backward()
        head.weight.grad = class_ids[:, None].expand(num_local, EMB).clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    with torch.no_grad():
        head.weight.copy_(class_ids[:, None].expand(num_local, EMB))
        head.visited.copy_(class_ids % 2 == 0)
    return backbone, head, optimizer, scheduler


def _state(rank: int, world_size: int, steps: int = 1) -> TrainState:
    backbone, head, optimizer, scheduler = _training_objects(rank, world_size, steps)
    return TrainState(Wrapper(backbone), head, optimizer, scheduler, torch.amp.GradScaler("cpu"), rank=rank,
                      world_size=world_size, num_classes=NUM_CLASSES, run_name="tiny")


def _checkpoint(rank: int, world_size: int, step: int = 7, sampler_seed: int = 3) -> dict:
    state = _state(rank, world_size)
    state.head.sampler_seed = torch.tensor(sampler_seed)
    return state.at(1, step, 4).state_dict()


def _agree_among(world_size: int, crash_rank=None):
    """Per-rank `agree` callables over threads; `crash_rank` dies at its second agreement."""
    barrier = threading.Barrier(world_size)
    votes = [True] * world_size
    calls = [0] * world_size

    def for_rank(rank: int):
        def agree(ok: bool) -> bool:
            calls[rank] += 1
            if rank == crash_rank and calls[rank] == 2:
                raise RuntimeError("simulated crash")
            votes[rank] = ok
            barrier.wait(timeout=120)
            result = all(votes)
            barrier.wait(timeout=120)
            return result
        return agree
    return for_rank, barrier


def _save_set(output, world_size: int, step: int, keep: int = 2, fingerprint=None, crash_rank=None):
    """Save one set from `world_size` threads; `crash_rank` dies after writing its file."""
    checkpoints = [_checkpoint(r, world_size, step) for r in range(world_size)]
    for_rank, barrier = _agree_among(world_size, crash_rank)
    errors = []

    def run(rank: int) -> None:
        try:
            save_checkpoint_set(output, checkpoints[rank], agree=for_rank(rank), keep=keep,
                                fingerprint=fingerprint)
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
    assert loaded["accumulated_grads"] is None  # saved right after an optimizer step
    # The host's top-level name is a hard link to the newest set.
    assert os.path.samefile(tmp_path / "checkpoint_gpu_0.pt", latest / "checkpoint_gpu_0.pt")

    state = _state(0, 1, steps=0)
    state.load_state_dict(loaded)
    _assert_equal(saved["state_optimizer"], state.optimizer.state_dict())
    assert state.scheduler.state_dict() == saved["state_lr_scheduler"]
    assert torch.equal(state.head.weight, saved["state_dict_softmax_fc"]["weight"])
    assert (state.epoch, state.global_step, state.batch_in_epoch) == (1, 7, 4)
    assert state.head.sampler_seed == 3


def test_a_save_inside_gradient_accumulation_keeps_the_partial_gradient(tmp_path):
    """Resumed at an accumulation step, the next optimizer step is the uninterrupted run's."""
    def half_step(state: TrainState) -> None:
        state.student(torch.full((2, 4), 0.5)).sum().backward()  # first of two accumulated batches

    straight = _state(0, 1)
    half_step(straight)
    save_checkpoint_set(tmp_path, straight.at(0, 3, 3).state_dict())
    resumed = _state(0, 1)
    resumed.load_state_dict(load_checkpoint_set(find_latest_complete(tmp_path), 0, 1))
    for state in (straight, resumed):
        half_step(state)
        state.optimizer.step()
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        assert torch.equal(a, b)


def test_an_epoch_end_position_is_saved_as_the_next_epoch_like_the_host():
    state = _state(0, 1)
    state.steps_per_epoch = 4
    assert (state.at(1, 8, 4).epoch, state.batch_in_epoch) == (2, 0)


def test_atomic_files_get_the_mode_open_gives_not_mkstemps_private_one(tmp_path):
    """A model.pt written through the temporary-file rename is readable by the group like any file."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    save_file_atomic({"w": torch.zeros(1)}, tmp_path / "model.pt")
    assert (tmp_path / "model.pt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


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
    with pytest.raises(CheckpointError, match="not a complete checkpoint set"):
        load_checkpoint_set(partial, rank=0, world_size=2)
    assert load_file(tmp_path / "checkpoint_gpu_1.pt")["global_step"] == 100


def test_a_truncated_rank_file_falls_back_to_the_previous_set_and_is_rewritten(tmp_path, caplog):
    _save_set(tmp_path, world_size=2, step=100)
    _save_set(tmp_path, world_size=2, step=200)
    newest = tmp_path / "checkpoints" / "step_000000200" / "checkpoint_gpu_1.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert list_complete_sets(tmp_path) == [tmp_path / "checkpoints" / "step_000000100"]
    assert "step_000000200/checkpoint_gpu_1.pt is truncated" in caplog.text
    _save_set(tmp_path, world_size=2, step=200)  # the resumed run saves that step again
    assert find_latest_complete(tmp_path) == newest.parent


def _full_disk(real_save):
    def save(obj, path):
        if "checkpoint_gpu_1" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path)
    return save


def test_disk_full_names_the_folder_the_space_and_the_intact_set(tmp_path, monkeypatch):
    _save_set(tmp_path, world_size=2, step=100)
    monkeypatch.setattr(sets, "save_file_atomic", _full_disk(sets.save_file_atomic))
    checkpoints = [_checkpoint(r, 2, 200) for r in range(2)]
    for_rank, _ = _agree_among(2)
    errors = {}

    def run(rank):
        try:
            save_checkpoint_set(tmp_path, checkpoints[rank], agree=for_rank(rank))
        except CheckpointSaveError as exc:
            errors[rank] = str(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(errors) == {0, 1}  # every rank stops, none waits for the other
    assert "no space left" in errors[1] and "step_000000200" in errors[1] and "MiB" in errors[1]
    assert "step_000000100 is intact" in errors[1] and "step_000000100 is intact" in errors[0]
    assert find_latest_complete(tmp_path) == tmp_path / "checkpoints" / "step_000000100"
    assert not (tmp_path / "checkpoints" / "step_000000200").exists()  # space given back


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
    save_checkpoint_set(tmp_path, _checkpoint(0, 1, step=6, sampler_seed=99))
    loaded = load_checkpoint_set(find_latest_complete(tmp_path), rank=0, world_size=1)
    assert loaded["head_extra"]["sampler"] == first["head_extra"]["sampler"] == 3


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
        _state(rank, new_world, steps=0).load_state_dict(loaded)


class FrozenFirst(nn.Module):
    """iresnet-like: a frozen parameter in the middle of the backbone (`features.weight`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Linear(4, 3)
        self.features = nn.BatchNorm1d(3)
        self.features.weight.requires_grad_(False)
        self.fc = nn.Linear(3, EMB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.conv(x)))


def test_groups_hold_frozen_parameters_like_the_host():
    torch.manual_seed(0)
    backbone, head = FrozenFirst(), ShardedHead(NUM_CLASSES)
    host = torch.optim.SGD(params=[{"params": backbone.parameters()}, {"params": head.parameters()}], lr=0.1)
    ours = build_optimizer("sgd", host_param_groups(backbone, head), lr=0.1)
    assert [len(g["params"]) for g in ours.param_groups] == [len(g["params"]) for g in host.param_groups]
    backbone(torch.ones(2, 4)).sum().backward()
    ours.step()
    host.load_state_dict(ours.state_dict())  # what arcface_torch's resume=True does


def test_save_model_is_plain_fp32_without_prefix(tmp_path):
    backbone = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).to(torch.bfloat16)
    state = load_file(save_model(Wrapper(backbone), tmp_path))
    assert set(state) == set(backbone.state_dict())
    assert state["0.weight"].dtype == torch.float32
    assert state["1.num_batches_tracked"].dtype == torch.int64


def test_unsafe_values_and_missing_agreement_fail_at_save_time(tmp_path):
    state = _state(0, 1)
    state.head.sampler_seed = torch.Generator()
    with pytest.raises(TypeError, match=r"head_extra.*'sampler'.*Generator"):
        state.state_dict()
    with pytest.raises(ValueError, match="agree"):
        save_checkpoint_set(tmp_path, _checkpoint(0, 2), agree=None)


def _gloo_save(rank: int, world_size: int, output: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{output}/rendezvous", rank=rank,
                            world_size=world_size)
    try:
        for step in (10, 20, 30):
            save_checkpoint_set(output, _checkpoint(rank, world_size, step),
                                agree=all_ranks_agree, keep=2)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_write_one_set(tmp_path):
    torch.multiprocessing.spawn(_gloo_save, args=(2, str(tmp_path)), nprocs=2, join=True)
    assert [p.name for p in list_complete_sets(tmp_path)] == ["step_000000020", "step_000000030"]
    for rank in range(2):
        loaded = load_checkpoint_set(find_latest_complete(tmp_path), rank=rank, world_size=2)
        assert loaded["global_step"] == 30 and loaded["rank"] == rank
