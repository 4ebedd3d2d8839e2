"""The distillation baselines AdaDistill (ECCV 2024) compares with.

- ArcDistill / CosDistill ("AMLDistill", paper Eq. 4): the student is trained against the
  teacher's trained classifier, frozen (`FixedClassifierHead`).
- Vanilla KD (paper Eq. 2): a learned Partial FC plus the mean squared distance between the
  L2-normalised student and teacher embeddings (`FeatureKDHead`).

Both reuse `ShardedMarginSoftmax`, so sharding, sampling, margin and cross-entropy are those of
`PartialFC`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from insightface_adadistill.distributed import all_reduce
from insightface_adadistill.heads.partial_fc import HeadOutput, ShardedHead, init_centres, reshard_weight
from insightface_adadistill.heads.spec import HEADS, HeadArgs, HeadSpec


# ---------------------------------------------------------------- pure functions

def feature_distance(local_student: torch.Tensor, local_teacher: torch.Tensor, world_size: int) -> torch.Tensor:
    """Global-batch mean (0-dim) of |s - t|^2 = 2 - 2 cos of the L2-normalised (B, E) embeddings.

    The value is identical on every rank; the gradient is that of this rank's own mean, which DDP's
    average over the W ranks turns into the global mean's (the host's convention, as
    `all_gather_with_grad`).
    """
    student, teacher = F.normalize(local_student.float()), F.normalize(local_teacher.float())
    local_mean = (student - teacher).pow(2).sum() / local_student.shape[0]
    total = all_reduce(local_mean.detach() / world_size)
    return local_mean + (total - local_mean).detach()  # value: global mean; gradient: local mean


# ---------------------------------------------------------------- modules

class FixedClassifierHead(ShardedHead):
    """ArcDistill / CosDistill: margin softmax against the teacher's frozen classifier.

    Buffer `weight` (num_local, E): this rank's rows of the teacher's full (C, E) classifier (the
    arcface_torch Partial FC shards concatenated in rank order; the published code's `kernel` is
    (E, C) and must be transposed first). The teacher's embeddings are not needed.
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int, teacher_classifier: torch.Tensor, sample_rate: float = 1.0,
                 seed: int = 0) -> None:
        expected = (num_classes, embedding_size)
        if tuple(teacher_classifier.shape) != expected:
            hint = (" (it looks transposed: the published code's `kernel` is (E, C); pass kernel.t())"
                    if tuple(teacher_classifier.shape) == expected[::-1] else
                    "; check num_classes and embedding_size against the teacher's training run")
            raise ValueError(f"teacher classifier has shape {tuple(teacher_classifier.shape)}, "
                             f"expected (num_classes, embedding_size) = {expected}{hint}")
        super().__init__(margin_loss, embedding_size, num_classes, sample_rate, seed)
        frozen = reshard_weight(teacher_classifier.detach().float(), self.margin_softmax.rank,
                                self.margin_softmax.world_size)
        self.register_buffer("weight", frozen)


class FeatureKDHead(ShardedHead):
    """Vanilla KD: learned Partial FC loss + `kd_weight` * `feature_distance(student, teacher)`.

    Parameter `weight` (num_local, E), as `PartialFC`; the stats add `distill/feature_distance`
    (the unweighted KD term).
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int, sample_rate: float = 1.0, kd_weight: float = 1.0, seed: int = 0) -> None:
        if kd_weight < 0:
            raise ValueError(f"feature_kd_weight must be >= 0, got {kd_weight}")
        super().__init__(margin_loss, embedding_size, num_classes, sample_rate, seed)
        self.kd_weight = kd_weight
        self.weight = nn.Parameter(init_centres(self.num_local, embedding_size))

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor, *,
                teacher: Optional[torch.Tensor] = None) -> HeadOutput:
        self.check_teacher(local_embeddings, teacher)
        margin_loss, stats = super().forward(local_embeddings, local_labels)
        distance = feature_distance(local_embeddings, teacher, self.margin_softmax.world_size)
        stats["distill/feature_distance"] = distance.detach()
        return HeadOutput(margin_loss + self.kd_weight * distance, stats)


# ---------------------------------------------------------------- registration

@HEADS.register(spec=HeadSpec(teacher_classifier=True))
def arcdistill(args: HeadArgs) -> nn.Module:
    """ArcDistill / CosDistill (margin by margin_list) against the teacher's frozen classifier."""
    return FixedClassifierHead(args.margin_loss, args.embedding_size, args.num_classes,
                               args.teacher_classifier, args.sample_rate, args.seed)


@HEADS.register(spec=HeadSpec(teacher_embeddings=True, learned_weights=True))
def feature_kd(args: HeadArgs) -> nn.Module:
    """Vanilla KD (paper Eq. 2): learned classifier + normalised-embedding MSE."""
    return FeatureKDHead(args.margin_loss, args.embedding_size, args.num_classes, args.sample_rate,
                         args.feature_kd_weight, args.seed)
