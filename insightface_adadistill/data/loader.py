"""The training DataLoader: arcface_torch's sampler and worker seeding, plus exact mid-epoch resume.

The sampler yields `(epoch, index)` pairs, so the dataset's deterministic flips follow the epoch
even inside persistent workers; `FaceLoader.set_epoch(epoch, start_batch=n)` yields exactly the
batches n, n+1, ... of the uninterrupted epoch.
"""
from __future__ import annotations

import functools
import math
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from insightface_adadistill.errors import DataError

from .datasets import normalise_pixels


class DistributedSampler(Sampler):
    """arcface_torch's sampler (`utils/utils_distributed_sampler.py`), yielding `(epoch, index)`.

    Each epoch: `randperm(N)` with a generator seeded `seed + epoch` (the same on every rank, as the
    caller passes one shared seed), padded to a multiple of `world_size` by repeating from the
    start, and rank r takes positions r, r + W, r + 2W, ... `start` skips that many of the rank's
    samples in the current epoch (mid-epoch resume).
    """

    def __init__(self, dataset_len: int, world_size: int, rank: int, seed: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1} for world size {world_size}")
        if dataset_len < 1:
            raise ValueError("the dataset is empty; there is nothing to sample")
        self.dataset_len = dataset_len
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.num_samples = math.ceil(dataset_len / world_size)  # per rank, after padding

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip the first `start` samples of this rank."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside 0..{self.num_samples} samples of this rank")
        self.epoch, self.start = int(epoch), int(start)

    def rank_indices(self) -> torch.Tensor:
        """This rank's full index list for the current epoch (before `start` is applied), (ceil(N/W),)."""
        order = torch.randperm(self.dataset_len, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        total = self.num_samples * self.world_size
        padded = order.repeat(math.ceil(total / self.dataset_len))[:total]  # repeat from the start
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.rank_indices()[self.start:].tolist():
            yield epoch, index

    def __len__(self) -> int:
        return self.num_samples - self.start


def seed_worker(worker_id: int, base_seed: int) -> None:
    """arcface_torch's worker seed, num_workers * rank + worker_id + seed, for numpy, random and
    torch (the flips do not use it; custom augmentations may)."""
    worker_seed = base_seed + worker_id
    np.random.seed(worker_seed % 2 ** 32)
    random.seed(worker_seed)
    torch.manual_seed(worker_seed)


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """`fn` applied to every tensor of a (nested) batch, in a batch of the same structure."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_map_tensors(item, fn) for item in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(item, fn) for item in batch)
    if isinstance(batch, dict):
        return {name: _map_tensors(item, fn) for name, item in batch.items()}
    return batch


def normalise_batch(batch: Any) -> Any:
    """A batch whose `image` is uint8 pixels (a `uint8=True` dataset's, 4x fewer bytes to ship, pin and
    copy), with that image normalised where it lies, to the bits of the float items; else unchanged."""
    image = getattr(batch, "image", None)
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        return batch._replace(image=normalise_pixels(image))
    return batch


class FaceLoader:
    """What `build_dataloader` returns: iterate it for batches of `Sample` fields.

    Each batch is a `Sample` of tensors: image (B, 3, 112, 112) float32, label (B,) int64,
    index (B,) int64, flipped (B,) bool; on the GPU when the device is CUDA. A `uint8=True`
    dataset's pixels are normalised here (`normalise_batch`), after the copy.
    """

    def __init__(self, dataset: Dataset, sampler: DistributedSampler, loader: DataLoader,
                 device: torch.device) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.loader = loader
        self.device = device
        self.batch_size: int = loader.batch_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a full epoch on this rank (drop_last: floor(ceil(N / W) / B))."""
        return self.sampler.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle for `epoch` (and its flips); start after `start_batch` batches of it."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside 0..{self.batches_per_epoch} "
                             "batches of this epoch; the checkpoint does not match this data/batch size")
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def skip_batches(self, count: int) -> None:
        """Resume inside the current epoch: the next iteration starts at batch `count`."""
        self.set_epoch(self.sampler.epoch, count)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return self._prefetch() if self.device.type == "cuda" else map(normalise_batch, self.loader)

    def _prefetch(self) -> Iterator[Any]:
        """Copy and normalise the next batch on a side stream while the current one is used
        (arcface_torch's DataLoaderX without the extra thread: the DataLoader workers already run ahead)."""
        stream = torch.cuda.Stream(self.device)
        batches = iter(self.loader)

        def preload() -> Any:
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(stream):  # copy and normalise on the side stream, ahead of compute
                return normalise_batch(_map_tensors(batch, lambda t: t.to(self.device, non_blocking=True)))

        upcoming = preload()
        while upcoming is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)  # the copy must finish before compute reads it
            # Memory allocated on the copy stream must not be reused while compute still reads it.
            _map_tensors(upcoming, lambda t: t.record_stream(current))
            batch, upcoming = upcoming, preload()
            yield batch


def build_dataloader(dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int,
                     num_workers: int, device: torch.device | str) -> FaceLoader:
    """The training loader with arcface_torch semantics (`train_v2.py`, `dataset.py`; docs/data.md).

    `dataset` is indexed with `(epoch, index)` pairs (`FaceDataset` accepts them; a custom dataset
    must too). `batch_size` is per rank, with drop_last: an epoch has floor(ceil(N/W) / B) batches.
    `seed` (config.seed, identical on all ranks) seeds the permutation (seed + epoch) and the workers
    (num_workers * rank + worker_id + seed); the workers are kept alive across epochs. On a CUDA
    `device` batches are pinned and copied one batch ahead on a side stream. Call
    `set_epoch(epoch, start_batch)` before each epoch; the DataLoader has its own generator, so
    creating an iterator never consumes the global torch RNG.
    """
    device = torch.device(device)
    sampler = DistributedSampler(len(dataset), world_size, rank, seed)
    if sampler.num_samples < batch_size:
        raise DataError(f"each rank gets {sampler.num_samples} of {len(dataset)} samples (world size "
                         f"{world_size}), fewer than batch_size {batch_size}, so an epoch has no "
                         "batch; lower batch_size or use more data")
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(seed_worker, base_seed=num_workers * rank + seed),
        generator=torch.Generator().manual_seed(seed))
    return FaceLoader(dataset, sampler, loader, device)
