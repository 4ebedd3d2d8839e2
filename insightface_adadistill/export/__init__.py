"""Deployment: ONNX export for insightface / ICCV21-MFR, and our implementation of the MFR checks.

- `onnx`: `export_onnx(backbone, path)` and `verify_onnx`, behind `adadistill export-onnx`;
- `mfr_check`: `check_onnx(path, track)`, behind `adadistill check-onnx`.

Names resolve lazily so that `check-onnx` does not import torch.
"""
from importlib import import_module
from typing import Any

_PUBLIC = {"export_onnx": "onnx", "verify_onnx": "onnx", "check_exportable": "onnx", "check_onnx": "mfr_check"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
