"""Training data with the teacher's cached embedding attached to every sample.

The row is read where the image is (in the DataLoader worker), so the collated batch carries it:
pinned and copied to the GPU one batch ahead with the images, and the teacher never runs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from insightface_adadistill.cache.reader import TeacherCache


class TeacherSample(NamedTuple):
    """A `Sample` plus `teacher`: (E,) the cached teacher embedding of exactly this image (the
    flipped column when `flipped`), in the cache's storage dtype."""

    image: torch.Tensor
    label: torch.Tensor
    index: int
    flipped: bool
    teacher: torch.Tensor


class CachedTeacherDataset(Dataset):
    """Wraps a `FaceDataset`: items are `TeacherSample`s; length, labels and `set_epoch` pass through."""

    def __init__(self, dataset: Dataset, cache: TeacherCache) -> None:
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name in ("dataset", "cache"):  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item) -> TeacherSample:
        sample = self.dataset[item]
        return TeacherSample(*sample, self.cache.rows.read(sample.index, sample.flipped))
