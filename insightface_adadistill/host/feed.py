"""How our head is called from inside the host's loop: teacher feed and call adapter.

The host's iteration is `loss = module_partial_fc(backbone(img), local_labels)`. Only the student's
forward sees `img`, so a hook on the student runs the frozen teacher (held by the hook, outside the
student's module tree: not in its state_dict, not in DDP, never in model.pt), and hooks on the head
adapt the host's call to our head contract (docs/heads.md). The head object the host gets is ours,
so its `state_dict` (`state_dict_softmax_fc`) has our keys unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn


class TeacherFeed:
    """Runs the frozen teacher on each training batch the student sees; the head takes it once.

    `on_student_forward` is a forward hook of the student (the module `get_model` returned); eval-mode
    forwards (the host's verification) do not run the teacher.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.device: Optional[torch.device] = None
        self.pending: Optional[Tensor] = None

    def on_student_forward(self, module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        if not module.training:
            return
        images = inputs[0]  # (B, 3, 112, 112), the batch the student just embedded
        if self.device != images.device:  # the host moves the student after get_model returns
            self.teacher.to(images.device)
            self.device = images.device
        self.pending = self.teacher(images)  # (B, E), no graph

    def take(self) -> Tensor:
        """The teacher embeddings of the last training batch; each batch is handed out once."""
        if self.pending is None:
            raise RuntimeError("the head was called without a training-mode student forward before it: "
                               "host-train feeds the teacher from the model get_model() returned, so the "
                               "loop must call backbone(img) and then module_partial_fc(embeddings, labels)")
        teacher, self.pending = self.pending, None
        return teacher


class HostHeadCall:
    """Makes `head(local_embeddings, local_labels) -> loss` (the host's call) run our head contract.

    The batch's teacher embeddings go in as `teacher=`; the host gets the loss tensor alone, and `stats`
    keeps the last call's `HeadOutput` statistics (by tag). Gradients need no conversion: our heads
    follow the host's convention (distributed.py).
    """

    def __init__(self, head: nn.Module, feed: Optional[TeacherFeed]) -> None:
        self.feed = feed
        self.stats: Dict[str, Tensor] = {}
        head.register_forward_pre_hook(self._before, with_kwargs=True)
        head.register_forward_hook(self._after)

    def _before(self, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]):
        if len(args) != 2 or kwargs:
            raise TypeError(f"host-train's head takes the host's call module_partial_fc(local_embeddings, "
                            f"local_labels); got {len(args)} positional and {sorted(kwargs)} keyword arguments")
        return args, {"teacher": self.feed.take() if self.feed is not None else None}

    def _after(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> Tensor:
        loss, self.stats = output  # HeadOutput
        return loss
