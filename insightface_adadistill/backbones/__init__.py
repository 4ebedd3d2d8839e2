"""Face-recognition backbones behind one registry, with arcface_torch's names and `get_model` surface.

`get_model("r50", fp16=True, num_features=512, dropout=0.0)` works as in arcface_torch, and every
model maps (B, 3, 112, 112) RGB normalised as (p - 127.5) / 127.5 to an un-normalised (B, E)
float32 embedding. Adding a backbone is one function decorated with `register_backbone`.
"""
from __future__ import annotations

import re
from typing import Any, List

from torch import nn

from insightface_adadistill.backbones import (  # noqa: F401  (registration)
    adaface, iresnet, mfn, mobilefacenet, tiny, vit)
from insightface_adadistill.backbones.base import FaceBackbone
from insightface_adadistill.backbones.spec import BACKBONES, BackboneSpec, register_backbone

__all__ = ["BackboneSpec", "FaceBackbone", "backbone_spec", "get_model", "list_backbones", "register_backbone"]


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build backbone `name` (e.g. 'r50', 'mbf', 'mfn', 'vit_t'); `None` kwargs are dropped.

    Common kwargs: `fp16` (autocast the trunk), `num_features` (embedding size E), `dropout`,
    `amp_dtype` ('fp16'/'bf16', default fp16 on CUDA and bf16 on CPU).

    Raises:
        ValueError: unknown name; the message suggests the closest registered one.
    """
    alias = re.fullmatch(r"iresnet(\d+)", name)
    if alias and f"r{alias.group(1)}" in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: arcface_torch's get_model calls it 'r{alias.group(1)}'")
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> List[str]:
    """All registered backbone names, sorted."""
    return BACKBONES.names()


def backbone_spec(name: str) -> BackboneSpec:
    """The `BackboneSpec` (input size, normalisation, default embedding size, source) of `name`."""
    return BACKBONES.spec(name)
