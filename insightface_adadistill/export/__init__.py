"""Deployment: ONNX export for insightface / ICCV21-MFR, and our implementation of the MFR checks.

- `onnx`: `export_onnx(backbone, path)`, `verify_onnx`, and `adadistill export-onnx` (`export_main`);
- `mfr_check`: `check_onnx(path, track)` and `adadistill check-onnx` (`check_onnx_main`).

Names resolve lazily so that `check-onnx` does not import torch.
"""
from importlib import import_module
from typing import Any

_PUBLIC = {
    "export_onnx": ("insightface_adadistill.export.onnx", "export_onnx"),
    "verify_onnx": ("insightface_adadistill.export.onnx", "verify_onnx"),
    "load_backbone": ("insightface_adadistill.export.onnx", "load_backbone"),
    "export_main": ("insightface_adadistill.export.onnx", "main"),
    "check_onnx": ("insightface_adadistill.export.mfr_check", "check_onnx"),
    "check_onnx_main": ("insightface_adadistill.export.mfr_check", "main"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'insightface_adadistill.export' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    return getattr(import_module(module), attribute)
