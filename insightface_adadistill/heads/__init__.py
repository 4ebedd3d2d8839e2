"""Classification and distillation heads: margins, Partial FC, AdaDistill and the paper's baselines.

Every head is sharded over ranks like arcface_torch's Partial FC and is called the same way
(docs/heads.md): `loss, stats = head(local_embeddings, local_labels, teacher=local_teacher_embeddings)`.
`build_head(distill, HeadArgs(...))` picks one by the config's `distill` key; `head_spec(distill)` says
what it needs.
"""
from __future__ import annotations

import importlib
import pkgutil

from insightface_adadistill.heads.adadistill import AdaDistillHead, update_class_centres
from insightface_adadistill.heads.baselines import FeatureKDHead, FixedClassifierHead, feature_distance
from insightface_adadistill.heads.margins import AdaFaceMargin, CombinedMarginLoss, build_margin, build_margin_loss
from insightface_adadistill.heads.partial_fc import (HeadOutput, PartialFC, ShardedHead, ShardedMarginSoftmax,
                                                     distributed_cross_entropy, reshard_weight)
from insightface_adadistill.heads.spec import (HEADS, STANDALONE, HeadArgs, HeadSpec, build_head, head_name, head_spec,
                                               heads_with)

__all__ = ["AdaDistillHead", "AdaFaceMargin", "CombinedMarginLoss", "FeatureKDHead", "FixedClassifierHead", "HEADS",
           "HeadArgs", "HeadOutput", "HeadSpec", "PartialFC", "STANDALONE", "ShardedHead", "ShardedMarginSoftmax",
           "build_head", "build_margin", "build_margin_loss", "distributed_cross_entropy", "feature_distance",
           "head_name", "head_spec", "heads_with", "reshard_weight", "update_class_centres"]

# Every module here registers its heads when imported, so a new head is one new file (docs/heads.md).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
