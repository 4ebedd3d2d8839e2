"""Classification and distillation heads: margins, Partial FC, AdaDistill and the paper's baselines.

Every head is sharded over ranks like arcface_torch's Partial FC and is called the same way:
`loss, stats = head(local_embeddings, local_labels, teacher=local_teacher_embeddings)` (`teacher`
only for heads with `needs_teacher`), the stats keyed by their TensorBoard tag (docs/heads.md).
`build_head` picks one by the config's `distill` key.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from insightface_adadistill.heads.adadistill import AdaDistillHead, update_class_centres
from insightface_adadistill.heads.baselines import FeatureKDHead, FixedClassifierHead, feature_distance
from insightface_adadistill.heads.margins import AdaFaceMargin, CombinedMarginLoss, build_margin, build_margin_loss
from insightface_adadistill.heads.partial_fc import (HEADS, HeadArgs, HeadOutput, PartialFC, ShardedHead,
                                                     ShardedMarginSoftmax, distributed_cross_entropy, reshard_weight)

__all__ = ["AdaDistillHead", "AdaFaceMargin", "CombinedMarginLoss", "FeatureKDHead", "FixedClassifierHead", "HEADS",
           "HeadOutput", "PartialFC", "ShardedHead", "ShardedMarginSoftmax", "build_head", "build_margin", "build_margin_loss",
           "distributed_cross_entropy", "feature_distance", "reshard_weight", "update_class_centres"]


def build_head(distill: Optional[str], margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               embedding_size: int, num_classes: int, sample_rate: float = 1.0, alpha: Any = "weighted",
               teacher_classifier: Optional[torch.Tensor] = None, feature_kd_weight: float = 1.0,
               seed: int = 0) -> nn.Module:
    """The head for config `distill`: None or 'standalone', 'adadistill', 'arcdistill', 'feature_kd'.

    `teacher_classifier` is the teacher's full (C, E) classifier, used by 'arcdistill' only.
    """
    name = "standalone" if distill is None else distill
    if teacher_classifier is not None and name != "arcdistill":
        raise ValueError(f"teacher_classifier is only used by distill='arcdistill', not {name!r}; "
                         f"remove it from the config")
    args = HeadArgs(margin_loss, embedding_size, num_classes, sample_rate, seed, alpha, teacher_classifier,
                    feature_kd_weight)
    return HEADS.create(name, args=args)
