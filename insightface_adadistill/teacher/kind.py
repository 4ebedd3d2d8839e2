"""What a `teacher_weights` value names, decided from the text alone (no file is opened).

- 'onnx': a `*.onnx` file, run through onnxruntime; its embedding size comes from the model.
- 'pack': a bare name without a folder or suffix, e.g. `buffalo_l`: an insightface model pack
  under `~/.insightface/models/<pack>/` (or `$INSIGHTFACE_HOME`), whose recognition model is ONNX.
- 'torch': anything else (`model.pt`, `backbone.pth`, `checkpoint_gpu_0.pt`, AdaFace's `.ckpt`),
  built from `teacher_network`.

The config check (a torch teacher needs `teacher_network`) and the teacher loader read this one
rule, so they cannot disagree about which teachers need a network name.
"""
from __future__ import annotations

from pathlib import PurePath
from typing import Literal

TeacherKind = Literal["torch", "onnx", "pack"]


def teacher_weights_kind(weights: str) -> TeacherKind:
    """'onnx', 'pack' or 'torch' for a `teacher_weights` string (module docstring)."""
    path = PurePath(weights)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if len(path.parts) == 1 and not path.suffix and "\\" not in weights:
        return "pack"
    return "torch"


def needs_network(weights: str) -> bool:
    """Whether a teacher from `weights` is built from `teacher_network` (only PyTorch files are)."""
    return teacher_weights_kind(weights) == "torch"
