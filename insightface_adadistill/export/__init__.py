"""Deployment: ONNX export for insightface / ICCV21-MFR, and our implementation of the MFR checks.

- `onnx`: `export_onnx(backbone, path)` and `verify_onnx`, behind `adadistill export-onnx`;
- `mfr_check`: `check_onnx(path, track)`, behind `adadistill check-onnx`.

Names resolve lazily so that `check-onnx` does not import torch.
"""
from importlib import import_module
from typing import Any

_PUBLIC = {
    "export_onnx": ("insightface_adadistill.export.onnx", "export_onnx"),
    "verify_onnx": ("insightface_adadistill.export.onnx", "verify_onnx"),
    "check_exportable": ("insightface_adadistill.export.onnx", "check_exportable"),
    "check_onnx": ("insightface_adadistill.export.mfr_check", "check_onnx"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'insightface_adadistill.export' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    return getattr(import_module(module), attribute)
