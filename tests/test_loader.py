"""Loader: arcface_torch sampler semantics, worker seeding, exact mid-epoch resume, CUDA prefetch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from insightface_adadistill.data.datasets import SyntheticDataset, build_dataset
from insightface_adadistill.data.loader import DistributedSampler, build_dataloader


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def reference_rank_indices(n: int, world: int, rank: int, seed: int, epoch: int) -> list[int]:
    """Spec 4.6 written out: randperm seeded seed + epoch, padded by repetition, rank r::W."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    total = math.ceil(n / world) * world
    while len(order) < total:
        order += order[:total - len(order)]
    return order[rank:total:world]


@pytest.mark.parametrize("n,world", [(10, 3), (12, 4), (2, 5), (7, 1)])
def test_sampler_pads_and_shards_like_arcface_torch(n, world):
    shards = []
    for rank in range(world):
        sampler = DistributedSampler(n, world, rank, seed=11)
        sampler.set_epoch(2)
        pairs = list(sampler)
        assert all(epoch == 2 for epoch, _ in pairs)
        shards.append([index for _, index in pairs])
        assert shards[-1] == reference_rank_indices(n, world, rank, 11, 2)
        assert len(sampler) == math.ceil(n / world)
    covered = sorted(i for shard in shards for i in shard)
    assert set(covered) == set(range(n)) and len(covered) == math.ceil(n / world) * world


def test_sampler_reshuffles_per_epoch_and_skips_start():
    sampler = DistributedSampler(50, 2, 1, seed=3)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in epoch0]
    sampler.set_epoch(0, start=10)
    assert list(sampler) == epoch0[10:] and len(sampler) == 15


def batches(loader, epoch: int, start_batch: int = 0) -> list:
    loader.set_epoch(epoch, start_batch)
    return [(b.image.clone(), b.label.clone(), b.index.clone(), b.flipped.clone()) for b in loader]


def assert_same_batches(left: list, right: list) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def ms1m(fixtures_dir):
    return build_dataset(str(fixtures_dir / "ms1m_style"), 8, seed=2048)


def test_batches_identical_across_worker_counts(ms1m):
    single = build_dataloader(ms1m, 4, rank=0, world_size=1, seed=2048, num_workers=0, device="cpu")
    pooled = build_dataloader(ms1m, 4, rank=0, world_size=1, seed=2048, num_workers=2, device="cpu")
    for epoch in (0, 1):
        # Persistent workers must follow the epoch (flips) without being told.
        assert_same_batches(batches(single, epoch), batches(pooled, epoch))
    first, second = batches(single, 0), batches(single, 1)
    assert not torch.equal(first[0][2], second[0][2])
    batch = first[0]
    assert batch[0].shape == (4, 3, 112, 112)
    assert batch[1].dtype == torch.int64 and batch[3].dtype == torch.bool


def test_uint8_batches_are_normalised_to_the_float_batches(ms1m, fixtures_dir):
    """Workers ship uint8 pixels; the loader's normalised batches are bit-identical to float ones."""
    pixels = build_dataset(str(fixtures_dir / "ms1m_style"), 8, seed=2048, uint8=True)
    floats = build_dataloader(ms1m, 4, rank=0, world_size=1, seed=2048, num_workers=0, device="cpu")
    shipped = build_dataloader(pixels, 4, rank=0, world_size=1, seed=2048, num_workers=2, device="cpu")
    for epoch in (0, 1):
        assert_same_batches(batches(floats, epoch), batches(shipped, epoch))
    assert next(iter(shipped.loader)).image.dtype == torch.uint8  # what crosses the process boundary


def test_mid_epoch_resume_gives_the_remaining_batches(ms1m):
    loader = build_dataloader(ms1m, 3, rank=1, world_size=2, seed=7, num_workers=1, device="cpu")
    assert loader.batches_per_epoch == len(loader) == 4  # ceil(24 / 2) // 3
    full = batches(loader, 3)
    assert_same_batches(batches(loader, 3, start_batch=2), full[2:])
    assert len(loader) == 2
    loader.set_epoch(3)
    loader.skip_batches(1)
    assert_same_batches([(b.image, b.label, b.index, b.flipped) for b in loader], full[1:])
    with pytest.raises(ValueError, match="start_batch 5 is outside 0..4"):
        loader.set_epoch(3, 5)


def test_iteration_leaves_global_rng_alone(ms1m):
    loader = build_dataloader(ms1m, 4, rank=0, world_size=1, seed=1, num_workers=1, device="cpu")
    state = torch.get_rng_state()
    batches(loader, 0)
    assert torch.equal(state, torch.get_rng_state())


class _NumpyDraw(torch.utils.data.Dataset):
    """Returns one numpy draw per item, to observe the worker seed."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, item):
        return np.random.randint(0, 2 ** 31)


def test_workers_are_seeded_like_arcface_torch():
    rank, seed, workers = 1, 100, 2
    loader = build_dataloader(_NumpyDraw(), 1, rank=rank, world_size=2, seed=seed, num_workers=workers,
                              device="cpu")
    draws = [int(batch) for batch in loader]
    # Batch j is fetched by worker j % 2 as its (j // 2)-th draw.
    expected = [np.random.RandomState(workers * rank + j % 2 + seed).randint(0, 2 ** 31, size=1 + j // 2)[-1]
                for j in range(2)]
    assert draws == expected


def test_too_few_samples_for_one_batch():
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        build_dataloader(SyntheticDataset(2, length=10), 8, rank=0, world_size=2, seed=0, num_workers=0,
                         device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetcher_matches_cpu_batches():
    dataset = SyntheticDataset(5, seed=1, length=40)
    cpu = build_dataloader(dataset, 4, rank=0, world_size=1, seed=9, num_workers=1, device="cpu")
    gpu = build_dataloader(dataset, 4, rank=0, world_size=1, seed=9, num_workers=1, device="cuda")
    expected = batches(cpu, 1, start_batch=1)
    gpu.set_epoch(1, 1)
    got = []
    for batch in gpu:
        assert all(field.is_cuda for field in batch)
        got.append(tuple(field.cpu() for field in batch))
    assert_same_batches(got, expected)
