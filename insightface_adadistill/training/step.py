"""One forward of a training step: student (+ frozen teacher) -> head -> loss and statistics.

`DistillStep` is the single branch point between standalone training and distillation: with
`teacher=None` it is arcface_torch's `loss = pfc(backbone(img), labels)`; with a teacher, the
same (flipped, normalised) images go through the frozen teacher and the head receives both
embeddings. Benchmarks time this same object, so what they measure is what training runs.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


class DistillStep(nn.Module):
    """Holds the student, the optional frozen teacher and the head; returns a dict of tensors.

    Returned keys: `loss` (0-dim, global-batch mean, identical on all ranks) plus the head's stats
    under their TensorBoard tags (detached tensors on the device, e.g. `distill/alpha`,
    `train/target_prob`), so the loop logs them as they are every `frequent` steps without a host
    sync on the other steps.
    """

    def __init__(self, student: nn.Module, head: nn.Module, teacher: Optional[nn.Module] = None,
                 teacher_in_batch: bool = False) -> None:
        super().__init__()
        if head.needs_teacher and teacher is None and not teacher_in_batch:
            raise ValueError(f"{type(head).__name__} distils from a teacher, but none was given; set "
                             "teacher_network and teacher_weights (or teacher_cache) in the config")
        self.student = student
        self.head = head
        # Kept out of the module tree: the teacher is never wrapped, optimised or checkpointed.
        self.__dict__["teacher"] = teacher if head.needs_teacher else None

    marks_cudagraph_steps = False  # set by `compile_step` for CUDA graphs (compile_mode='reduce-overhead')

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                teacher_embeddings: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """images (B, 3, 112, 112) normalised, labels (B,) int64 -> {'loss': 0-dim, **stats}.

        `teacher_embeddings` (B, E), the batch's rows of a teacher cache, replace the teacher's
        forward (they are the same numbers; see docs/teacher-cache.md).
        """
        if self.marks_cudagraph_steps:  # a new iteration: the previous step's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        local_embeddings = self.student(images)  # (B, E)
        teacher = self.__dict__["teacher"]
        if teacher_embeddings is not None:
            local_teacher = teacher_embeddings.float()  # stored fp16/bf16 rows widen on the device
        else:
            local_teacher = teacher(images) if teacher is not None else None  # (B, E), no graph
        loss, stats = self.head(local_embeddings, labels, teacher=local_teacher)
        return {"loss": loss, **stats}
