"""Our head statistics in the host's own TensorBoard run.

The host creates `SummaryWriter(log_dir=<output>/tensorboard)` on rank 0 and writes `loss` every
`frequent` steps. While host-train runs, `torch.utils.tensorboard.SummaryWriter` is a subclass that,
after each `loss` scalar, adds the head's 0-dim statistics (`distill/alpha`, ...) at the same
global step: the values of that step, not a window mean.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from torch import Tensor


@contextmanager
def tap_summary_writer(stats: Callable[[], Mapping[str, Tensor]]) -> Iterator[None]:
    """Within the block, every new SummaryWriter also logs `stats()` next to the host's `loss`."""
    from torch.utils import tensorboard  # imported here: it pulls in the tensorboard package

    original = tensorboard.SummaryWriter

    class TappedSummaryWriter(original):
        def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None, *args: Any,
                       **kwargs: Any) -> None:
            super().add_scalar(tag, scalar_value, global_step, *args, **kwargs)
            if tag == "loss":
                for name, value in stats().items():
                    super().add_scalar(name, float(value), global_step)

    tensorboard.SummaryWriter = TappedSummaryWriter
    try:
        yield
    finally:
        tensorboard.SummaryWriter = original
