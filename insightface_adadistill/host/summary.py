"""Our additions to the host's own TensorBoard run (docs/host-train.md).

The host creates `SummaryWriter(log_dir=<output>/tensorboard)` on rank 0, before it loads a
checkpoint, and writes `loss` every `frequent` steps. While host-train runs, that class is a subclass
that adds the head's 0-dim statistics of the same step after each `loss` (distillation runs only),
and on resume opens with TensorBoard's purge marker at the step after the host's checkpoint
(`global_step` of `<output>/checkpoint_gpu_0.pt`), so the steps a stopped run logged after that save
show once; the host's own writer appends them a second time.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional
from unittest.mock import patch

from torch import Tensor

from insightface_adadistill.errors import UserError
from insightface_adadistill.serialization import load_file

HOST_RANK0_CHECKPOINT = "checkpoint_gpu_0.pt"


def resumed_step(output: Path) -> Optional[int]:
    """`global_step` of the checkpoint the host's rank 0 resumes from; None if there is no readable
    one (the host then stops with its own error)."""
    try:
        return int(load_file(output / HOST_RANK0_CHECKPOINT, mmap=True)["global_step"])
    except (UserError, KeyError, TypeError, ValueError):
        return None


@contextmanager
def tap_summary_writer(stats: Optional[Callable[[], Mapping[str, Tensor]]], resume: bool) -> Iterator[None]:
    """Within the block, every new SummaryWriter logs `stats()` (if given) next to the host's `loss`
    and, when `resume`, hides the steps after the checkpoint it resumes from."""
    from torch.utils import tensorboard  # imported here: it pulls in the tensorboard package

    class TappedSummaryWriter(tensorboard.SummaryWriter):
        def __init__(self, log_dir: Optional[str] = None, *args: Any, **kwargs: Any) -> None:
            step = resumed_step(Path(log_dir).parent) if resume and log_dir and not args else None
            if step is not None and kwargs.get("purge_step") is None:
                kwargs["purge_step"] = step + 1
            super().__init__(log_dir, *args, **kwargs)

        def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None, *args: Any,
                       **kwargs: Any) -> None:
            super().add_scalar(tag, scalar_value, global_step, *args, **kwargs)
            if tag == "loss" and stats is not None:
                for name, value in stats().items():
                    super().add_scalar(name, float(value), global_step)

    with patch.object(tensorboard, "SummaryWriter", TappedSummaryWriter):
        yield
