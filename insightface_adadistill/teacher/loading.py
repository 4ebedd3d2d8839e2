"""Build the frozen teacher from a trained backbone file, refusing anything doubtful.

Weights are read by the one backbone loader (`backbones.loading.load_backbone`: arcface_torch
`model.pt` / `backbone.pth` / `checkpoint_gpu_{rank}.pt`, AdaDistill `*backbone.pth`, AdaFace `.ckpt`,
whose IR networks reverse our RGB batch to the BGR they were trained on themselves). Unlike the
published code, which logs a missing or mismatching file and trains on with a random teacher, every
problem here is an exception naming the file, the network and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from insightface_adadistill.backbones.loading import CONFIG_FLAGS, load_backbone
from insightface_adadistill.errors import InputNotFoundError, WeightsError
from insightface_adadistill.teacher.frozen import FrozenTeacher, check_precision
from insightface_adadistill.teacher.onnx_teacher import OnnxTeacher, build_onnx_teacher, is_onnx_teacher


def check_embedding_sizes(teacher_dim: int, student_dim: int) -> None:
    """AdaDistill moves the student's class centres towards teacher embeddings: the sizes must match."""
    if teacher_dim != student_dim:
        raise WeightsError(
            f"teacher embedding size {teacher_dim} != student embedding size {student_dim}: the class "
            f"centres hold teacher embeddings and are compared with student embeddings. Set "
            f"embedding_size={teacher_dim} for the student or use a teacher trained with {student_dim}"
        )


def build_teacher(network: Optional[str], weights: Optional[str | os.PathLike], embedding_size: int,
                  device: torch.device | str, dtype: str = "fp32",
                  channels_last: bool = False) -> FrozenTeacher | OnnxTeacher:
    """Build `network`, load `weights` strictly and freeze it; never returns a random teacher.

    `weights` is a file of the module docstring, an `.onnx` file or an insightface pack name such as
    'buffalo_l'; the last two give an `OnnxTeacher` run by onnxruntime (`teacher.onnx_teacher`), which
    needs no `network` (None) and has the model's embedding size. `dtype` is the forward precision
    ('fp32', 'bf16' or 'fp16', autocast). Either teacher maps (B, 3, 112, 112) -> (B, E) float32, with
    eval mode pinned and no gradients.
    """
    check_precision(dtype)
    if weights is not None and str(weights) and is_onnx_teacher(weights):
        return build_onnx_teacher(weights, device, dtype, channels_last)
    if network is None:
        raise WeightsError(f"teacher_network is not set for teacher_weights={str(weights)!r}: name the backbone the "
                         "weights belong to (e.g. teacher_network='r50'), or give an .onnx teacher")
    if weights is None or str(weights) == "":
        raise WeightsError(
            f"teacher_weights is not set for teacher_network={network!r}: distillation needs a trained "
            "teacher (model.pt, backbone.pth or checkpoint_gpu_0.pt); a random teacher is never used"
        )
    if Path(weights).is_dir():
        raise InputNotFoundError(f"teacher_weights {weights} is a folder, not a weights file (teacher_network="
                                 f"{network!r}); name the file inside it, e.g. {Path(weights) / 'model.pt'}")
    if not Path(weights).is_file():
        raise InputNotFoundError(
            f"teacher weights {weights} not found (teacher_network={network!r}); check teacher_weights"
        )
    model = load_backbone(network, weights, embedding_size, flags=CONFIG_FLAGS)
    return FrozenTeacher(model.to(device), precision=dtype, channels_last=channels_last)
