"""SplitMix64: the counter-based hash behind every per-sample random decision.

Steele, Lea and Flood, "Fast splittable pseudorandom number generators" (OOPSLA 2014), finaliser of
`SplittableRandom`. A hash of (seed, counter, ...) instead of a stateful RNG lets any process (a
DataLoader worker, another rank, a resumed run, the synthetic renderer in any batch) compute the
same value without sharing state.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np

MASK64 = (1 << 64) - 1

Word = TypeVar("Word", int, np.ndarray)


def splitmix64(x: Word) -> Word:
    """SplitMix64 finaliser, element-wise: a Python int in [0, 2**64) or a uint64 array (any shape).

    The masks make Python ints wrap like uint64; on uint64 arrays they change nothing.
    """
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)
