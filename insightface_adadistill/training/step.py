"""One forward of a training step: student (+ frozen teacher) -> head -> loss and statistics.

`DistillStep` is the single branch point between standalone training (`teacher=None`: arcface_torch's
`loss = pfc(backbone(img), labels)`) and distillation (the same images also go through the frozen
teacher and the head receives both embeddings). Benchmarks time this same object.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


class DistillStep:
    """Holds the student, the optional frozen teacher and the head; returns a dict of tensors.

    Not an `nn.Module`, so no `state_dict`, `parameters()`, optimizer or DDP wrapper reaches the
    teacher through it (the student and the head are saved and optimised on their own). Returned
    keys: `loss` (0-dim, global-batch mean, identical on all ranks) and the head's statistics under
    their TensorBoard tags (detached device tensors, e.g. `distill/alpha`: no host sync).
    """

    marks_cudagraph_steps = False  # set by `compile_step` for CUDA graphs (compile_mode='reduce-overhead')

    def __init__(self, student: nn.Module, head: nn.Module, teacher: Optional[nn.Module] = None) -> None:
        self.student = student
        self.head = head
        self.teacher = teacher

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 teacher_embeddings: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return self.forward(images, labels, teacher_embeddings)

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                teacher_embeddings: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """images (B, 3, 112, 112) normalised, labels (B,) int64 -> {'loss': 0-dim, **stats}; a teacher
        cache's rows `teacher_embeddings` (B, E) replace the teacher's forward (same numbers: docs/teacher-cache.md)."""
        if self.marks_cudagraph_steps:  # a new iteration: the previous step's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        local_embeddings = self.student(images)  # (B, E)
        if teacher_embeddings is not None:
            local_teacher = teacher_embeddings.float()  # stored fp16/bf16 rows widen on the device
        else:
            local_teacher = self.teacher(images) if self.teacher is not None else None  # (B, E), no graph
        loss, stats = self.head(local_embeddings, labels, teacher=local_teacher)
        return {"loss": loss, **stats}
