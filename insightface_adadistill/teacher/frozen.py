"""The frozen teacher: a pretrained backbone pinned to eval mode, run without gradients.

AdaDistill (and every baseline) needs the teacher's BatchNorm running statistics, never batch
statistics, so a parent module calling `.train()` must not switch the teacher to training mode.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from insightface_adadistill.backbones.base import PRECISIONS, precision_context


def check_precision(precision: str) -> str:
    """Validate a teacher precision name ('fp32', 'bf16' or 'fp16') and return it."""
    if precision not in PRECISIONS:
        raise ValueError(f"teacher_dtype {precision!r} is not supported; use one of {list(PRECISIONS)}")
    return precision


def teacher_forward(teacher: nn.Module, images: Tensor, dtype: str = "fp32") -> Tensor:
    """Embed `images` (B, 3, H, W) with `teacher` at precision `dtype` -> (B, E) float32.

    Runs under `torch.no_grad()` (not `inference_mode`: inference tensors cannot be saved for the
    student's backward, and the embeddings feed losses). Autocast uses the images' device type;
    'fp32' switches autocast off even inside the student's mixed-precision region.
    """
    with torch.no_grad(), precision_context(images.device.type, check_precision(dtype)):
        return teacher(images).float()


class FrozenTeacher(nn.Module):
    """Wraps a pretrained (B, 3, H, W) -> (B, E) backbone so that it stays in eval mode and has no
    trainable parameters; `precision` as `teacher_forward`'s dtype; `channels_last` stores the weights
    and feeds the images in that memory format, faster for convolutions on recent GPUs."""

    def __init__(self, backbone: nn.Module, precision: str = "fp32", channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.precision = check_precision(precision)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Always eval: BatchNorm must use the teacher's running statistics."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, E) float32 teacher embeddings, no graph."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return teacher_forward(self.backbone, images, self.precision)
