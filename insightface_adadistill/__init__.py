"""AdaDistill (ECCV 2024) adaptive knowledge distillation for InsightFace arcface_torch.

Importing the package has no side effects: no CUDA, no process group, no file access. The public
names below are resolved lazily so that `import insightface_adadistill` stays cheap.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "get_model": "insightface_adadistill.backbones",
    "list_backbones": "insightface_adadistill.backbones",
    "load_config": "insightface_adadistill.config",
    "PartialFC": "insightface_adadistill.heads",
    "AdaDistillHead": "insightface_adadistill.heads",
    "CombinedMarginLoss": "insightface_adadistill.heads",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'insightface_adadistill' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
