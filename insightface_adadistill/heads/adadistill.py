"""AdaDistill (Boutros, Štruc, Damer, "AdaDistill: Adaptive Knowledge Distillation for Deep Face
Recognition", ECCV 2024): the student's class centres are not learned but move every step towards
the teacher's embeddings, by an amount set by how well the student already agrees with the teacher.

Unlike the published code, the centres are sharded over ranks like Partial FC and updated from the
all-gathered global batch, so there is one consistent set of centres (no per-GPU copies drifting
apart), and duplicate labels in a batch have a defined result (see `update_class_centres`).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from insightface_adadistill.distributed import all_gather_tensor, all_reduce
from insightface_adadistill.heads.partial_fc import HeadOutput, ShardedHead, init_centres
from insightface_adadistill.heads.spec import HEADS, HeadArgs, HeadSpec

Alpha = Union[str, float]
ROW_STATS = ("alpha", "alpha_weighted", "centre_teacher_cos", "student_teacher_cos", "momentum")
_MOMENTUM_OF = {"weighted": "alpha_weighted", "plain": "alpha"}  # the named `distill_alpha` modes
ALPHA_RULE = "'weighted', 'plain' or a float in (0, 1)"


# ---------------------------------------------------------------- pure functions


def alpha_is_valid(alpha: object) -> bool:
    """The one rule for `distill_alpha` (the config check uses it too). A fixed momentum must lie
    strictly inside (0, 1): 1 never moves the centres off their random init, 0 replaces each
    centre by the last teacher embedding; neither is the paper's fixed-alpha baseline."""
    if isinstance(alpha, str):
        return alpha in _MOMENTUM_OF
    return isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 < alpha < 1.0


def check_alpha(alpha: Alpha) -> Alpha:
    """'weighted' (alpha', the paper's best), 'plain' (alpha) or a fixed momentum in (0, 1)."""
    if not alpha_is_valid(alpha):
        raise ValueError(f"distill_alpha must be {ALPHA_RULE}, got {alpha!r}")
    return alpha if isinstance(alpha, str) else float(alpha)


def group_index(values: torch.Tensor) -> torch.Tensor:
    """(N,) group ids in [0, N), equal exactly for equal values: `torch.unique(values,
    return_inverse=True)[1]` without the unique values, whose unknown count makes CUDA wait for
    the host."""
    ordered, order = values.sort()
    starts = torch.ones_like(values)
    starts[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(values).index_put_((order,), starts.cumsum(0) - 1)


@torch.no_grad()
def update_class_centres(centres: torch.Tensor, teacher_emb: torch.Tensor, student_emb: torch.Tensor,
                         labels: torch.Tensor, alpha: Alpha = "weighted") -> Dict[str, torch.Tensor]:
    """One AdaDistill centre update (paper Eq. 6-8) IN PLACE, no gradient, no communication.

    With t = teacher_emb / |teacher_emb|, s = student_emb / |student_emb| and w = centres[y] (raw,
    never renormalised), per sample i of class y:
        student_teacher_cos = clamp(cos(s_i, t_i), -1, 1)
        alpha               = clamp(student_teacher_cos, 1e-6, 1)                  (Eq. 7)
        centre_teacher_cos  = lambda_i = clamp(cos(w, t_i), 1e-6, 1)   (old centre)
        alpha_weighted      = clamp(student_teacher_cos * lambda_i, 1e-6, 1)       (Eq. 8)
        updated_i           = m_i * w + (1 - m_i) * t_i,  m_i = `momentum`          (Eq. 6)
    where m_i is alpha, alpha_weighted or the fixed float `alpha`. The clamps are the published
    code's (the paper writes [0, 1]). Duplicate labels: the new centre is the mean of the updated_i
    of its samples, each computed from the old centre; with unique labels that is Eq. 6 exactly.
    Only the batch's rows are read and written, O(N E) whatever C_local; the per-class sums use
    `index_put_(accumulate=True)`, serial on CPU and sort-based on CUDA, so the result is the same
    run after run. Nothing waits for the host (no masks or unique counts).

    `centres` (C_local, E) are this rank's, updated in place; `teacher_emb`, `student_emb` (N, E) the
    global batch; `labels` (N,) the column in `centres`, or -1 for samples of classes owned elsewhere
    (skipped). Returns per-sample (N,) stats, 0 on rows with label -1: those named in ROW_STATS and
    `class_count`, how many samples of the batch moved the sample's centre.
    """
    owned = (labels >= 0).to(centres.dtype)  # (N,)
    # A skipped sample joins the row of a class in the batch with weight 0, so every write below
    # lands on a real row without a mask; with no owned sample, row 0 gets its own value back.
    rows = torch.where(labels >= 0, labels, labels.amax().clamp(min=0))
    old = centres[rows]  # (N, E)
    teacher, student = F.normalize(teacher_emb.float()), F.normalize(student_emb.float())
    student_teacher_cos = (student * teacher).sum(dim=1).clamp(-1.0, 1.0)
    centre_teacher_cos = (F.normalize(old) * teacher).sum(dim=1).clamp(1e-6, 1.0)
    stats = {"alpha": student_teacher_cos.clamp(1e-6, 1.0),
             "alpha_weighted": (student_teacher_cos * centre_teacher_cos).clamp(1e-6, 1.0),
             "centre_teacher_cos": centre_teacher_cos, "student_teacher_cos": student_teacher_cos}
    stats["momentum"] = stats[_MOMENTUM_OF[alpha]] if isinstance(alpha, str) else torch.full_like(owned, alpha)
    updated = stats["momentum"].unsqueeze(1) * old + (1.0 - stats["momentum"]).unsqueeze(1) * teacher
    slot = group_index(rows)  # (N,) one slot per class in the batch
    sums = torch.zeros_like(old).index_put_((slot,), updated * owned.unsqueeze(1), accumulate=True)
    count = torch.zeros_like(owned).index_put_((slot,), owned, accumulate=True)[slot]  # (N,) per sample
    centres[rows] = torch.where(count.unsqueeze(1) > 0, sums[slot] / count.clamp(min=1.0).unsqueeze(1), old)
    stats = {name: value * owned for name, value in stats.items()}
    stats["class_count"] = count * owned
    return stats


# ---------------------------------------------------------------- modules

class AdaDistillHead(ShardedHead):
    """Margin softmax against centres distilled from the teacher (sharded like Partial FC).

    Buffers (the whole `state_dict`): `weight` (num_local, E) the centres, N(0, 0.01) at start and
    never given a gradient, and `visited` (num_local,) bool, whether a class has been updated yet.
    Each training-mode forward all-gathers student (with gradient), teacher and labels, updates
    the centres this rank owns from the global batch, then computes the loss with the UPDATED
    centres. In eval mode the centres are left alone. The stats, global over all ranks, are
    `train/target_prob` and, in training mode, the `distill/` tags of docs/heads.md.
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int, sample_rate: float = 1.0, alpha: Alpha = "weighted", seed: int = 0) -> None:
        super().__init__(margin_loss, embedding_size, num_classes, sample_rate, seed)
        self.alpha = check_alpha(alpha)
        self.register_buffer("weight", init_centres(self.num_local, embedding_size))
        self.register_buffer("visited", torch.zeros(self.num_local, dtype=torch.bool))
        self._norms: Optional[torch.Tensor] = None  # per-class centre norms (not state: derived from weight)
        self._norms_of: Optional[Tuple[int, int]] = None  # (data_ptr, version) of the weight they describe

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor, *,
                teacher: Optional[torch.Tensor] = None) -> HeadOutput:
        self.check_teacher(local_embeddings, teacher)
        embeddings, labels = self.gather(local_embeddings, local_labels)
        distill_stats: Dict[str, torch.Tensor] = {}
        if self.training:
            global_teacher = all_gather_tensor(teacher.float())  # (N, E)
            norms_valid = self._norms_of == (self.weight.data_ptr(), self.weight._version)
            stats = update_class_centres(self.weight, global_teacher, embeddings, labels, self.alpha)
            # Marks the batch's classes: bool accumulation is a logical or, so duplicates and the
            # -1 rows (clamped onto row 0, adding False) cannot undo a mark.
            self.visited.index_put_((labels.clamp(min=0),), stats["class_count"] > 0, accumulate=True)
            distill_stats = self._global_stats(stats, self._centre_norm_sum(labels, norms_valid))
        loss, stats = self.margin_softmax(embeddings, labels, self.weight)
        return HeadOutput(loss, {**distill_stats, **stats})

    @torch.no_grad()
    def _centre_norm_sum(self, labels: torch.Tensor, norms_valid: bool) -> torch.Tensor:
        """Sum of the centres' norms in O(B·E): only the batch's rows changed, so only their cached norms
        are recomputed. Any other write to the centres (a checkpoint load, a re-shard, `.to()`, user code)
        changes the tensor's version counter or storage, and the next step recomputes every row (a write
        through `.data`, which bypasses the counter, is not seen: write the centres with `copy_`)."""
        if norms_valid:
            rows = labels.clamp(min=0)  # a -1 row recomputes row 0: harmless
            self._norms[rows] = self.weight[rows].norm(dim=1)
        else:
            self._norms = self.weight.norm(dim=1)
        self._norms_of = (self.weight.data_ptr(), self.weight._version)
        return self._norms.sum()

    @torch.no_grad()
    def _global_stats(self, stats: Dict[str, torch.Tensor], norm_sum: torch.Tensor) -> Dict[str, torch.Tensor]:
        # One small all-reduce: each sample's stats live on the rank owning its class (zeros
        # elsewhere), so the SUM holds every sample on every rank; no host sync.
        rows = torch.stack([stats[name] for name in ROW_STATS])  # (5, N)
        totals = torch.stack([self.visited.sum(), norm_sum]).to(rows.dtype)
        packed = all_reduce(torch.cat([rows.flatten(), totals]))
        rows = packed[:rows.numel()].view_as(rows)  # (5, N), global
        num_classes = self.margin_softmax.num_classes
        means = {f"distill/{name}": rows[i].mean() for i, name in enumerate(ROW_STATS[:-1])}
        return {**means, "distill/alpha_per_sample": rows[-1],
                "distill/visited_fraction": packed[-2] / num_classes,
                "distill/centre_norm": packed[-1] / num_classes}


# ---------------------------------------------------------------- registration

@HEADS.register(spec=HeadSpec(teacher_embeddings=True))
def adadistill(args: HeadArgs) -> nn.Module:
    """AdaArcDistill / AdaCosDistill (margin by margin_list), alpha by `alpha`."""
    return AdaDistillHead(args.margin_loss, args.embedding_size, args.num_classes, args.sample_rate,
                          args.alpha, args.seed)
