"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021),
as arcface_torch's `PartialFC_V2`: class centres sharded over ranks, optional negative sampling,
margin softmax and a cross-entropy whose softmax spans every rank's columns.

`ShardedMarginSoftmax` is the one logits -> sampling -> margin -> cross-entropy path. It takes the
centres as an argument, so where they come from is the head's business: learned (`PartialFC`),
distilled from the teacher (`AdaDistillHead`) or the teacher's frozen classifier
(`FixedClassifierHead`). All ranks must pass the same B.

Labels: int64 global class ids of shape (B,) or (B, 1) in [0, num_classes). Their range is checked
once on the data side, so a step never waits for a device-to-host copy; ids outside it give
arcface_torch's loss of about 69.08 (docs/method.md#calling-a-head).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from insightface_adadistill.distributed import (all_gather_tensor, all_gather_with_grad, all_reduce,
                                                get_rank, get_world_size, shard_classes)
from insightface_adadistill.heads.spec import HEADS, HeadArgs, HeadSpec


class HeadOutput(NamedTuple):
    """What every head returns: `loss`, the 0-dim global-batch mean, identical on every rank, and
    `stats`, detached device tensors (no host sync) keyed by their TensorBoard tag (docs/heads.md)."""

    loss: torch.Tensor
    stats: Dict[str, torch.Tensor]


# ---------------------------------------------------------------- pure functions

def reshard_weight(full_weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's rows (num_local, E) of a full (C, E) centre matrix, e.g. to resume on another world size.

    The full matrix is the per-rank `weight` shards concatenated in rank order.
    """
    class_start, num_local = shard_classes(full_weight.shape[0], rank, world_size)
    return full_weight[class_start:class_start + num_local].clone()


def init_centres(num_local: int, embedding_size: int) -> torch.Tensor:
    """(num_local, E) drawn from N(0, 0.01), arcface_torch's and AdaDistill's initial centres."""
    return torch.normal(0.0, 0.01, (num_local, embedding_size))


class _DistributedCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over columns spread across ranks; see `distributed_cross_entropy`."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        positive = labels >= 0
        column = labels.clamp(min=0).unsqueeze(1)  # (N, 1); rows owned elsewhere are masked below
        empty = logits.shape[1] == 0  # a rank left with no sampled column still joins every collective
        row_max = logits.new_full((logits.shape[0],), float("-inf")) if empty else logits.amax(dim=1)
        all_reduce(row_max, torch.distributed.ReduceOp.MAX)  # the global max keeps exp() finite
        exp = torch.exp(logits - row_max.unsqueeze(1))
        row_sum = all_reduce(exp.sum(dim=1))  # global denominator
        softmax = exp / row_sum.unsqueeze(1)  # (N, c_local): global softmax on local columns
        p_target = (torch.zeros_like(row_max) if empty
                    else torch.where(positive, softmax.gather(1, column).squeeze(1), 0.0))
        all_reduce(p_target)  # each row's target lives on exactly one rank
        ctx.save_for_backward(softmax, positive, column)
        ctx.mark_non_differentiable(p_target)
        return -torch.log(p_target.clamp(min=1e-30)).mean(), p_target

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_p: Optional[torch.Tensor]):
        softmax, positive, column = ctx.saved_tensors
        grad = softmax.clone()
        if grad.shape[1] > 0:
            grad.scatter_add_(1, column, -positive.to(grad.dtype).unsqueeze(1))  # softmax - onehot
        return grad * (grad_loss / softmax.shape[0]), None


def distributed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean over N of -log softmax(target), the softmax spanning every rank's columns.

    `logits` (N, c_local) are this rank's columns, `labels` (N,) the target's column here or -1 where
    another rank holds it. Returns the 0-dim loss, identical on every rank, and the (N,) target
    probabilities (clamped at 1e-30 inside the log, as arcface_torch). Backward is the analytic
    (softmax - onehot) / N, without a host sync.
    """
    return _DistributedCrossEntropy.apply(logits, labels)


# ---------------------------------------------------------------- modules

class NegativeSampler:
    """Keeps every positive class and fills up with uniformly random negatives (arcface_torch 3.3).

    Owns its CPU generator (seeded per rank), so a run is reproducible and its state can be saved
    with the checkpoint; `state_dict` of the heads holds the centres only, for host compatibility.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, labels: torch.Tensor, num_local: int, num_sample: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampled columns (S,) in ascending order, and labels (N,) remapped to positions in them."""
        positive = torch.unique(labels[labels >= 0])  # sorted
        if num_sample >= positive.numel():
            score = torch.rand(num_local, generator=self.generator).to(labels.device)
            score[positive] = 2.0  # above every random score: positives are always kept
            index = torch.sort(torch.topk(score, num_sample).indices).values
        else:  # sample_rate = 0 or more positives than samples: positives only
            index = positive
        remapped = torch.where(labels >= 0, torch.searchsorted(index, labels.clamp(min=0)), labels)
        return index, remapped

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class ShardedMarginSoftmax(nn.Module):
    """Gather, sample, cosine logits, margin and distributed cross-entropy for one class shard.

    `margin_loss` maps (N, c) cosines and (N,) local labels to (N, c) scaled logits
    (`CombinedMarginLoss`); one with `needs_norms = True` (`AdaFaceMargin`) also gets the (N,) norms
    of the gathered embeddings and adds its `stats()` to the head's. This rank owns the classes
    [class_start, class_start + num_local) of `num_classes`; `sample_rate` is the fraction of local
    centres per step (positives always kept; 0: positives only); rank r samples with `seed` + r.
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num_classes: int,
                 sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not callable(margin_loss):
            raise TypeError(f"margin_loss must be callable (e.g. CombinedMarginLoss), got {type(margin_loss)}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        self.margin_loss = margin_loss
        self.margin_needs_norms = bool(getattr(margin_loss, "needs_norms", False))
        self.rank, self.world_size = get_rank(), get_world_size()
        self.num_classes = num_classes
        self.class_start, self.num_local = shard_classes(num_classes, self.rank, self.world_size)
        self.sample_rate = sample_rate
        self.num_sample = int(sample_rate * self.num_local)
        self.sampler = NegativeSampler(seed + self.rank) if sample_rate < 1.0 else None

    def gather_embeddings(self, local_embeddings: torch.Tensor, embedding_size: int) -> torch.Tensor:
        """(B, E) -> (W*B, E) fp32, differentiable (`distributed.all_gather_with_grad`)."""
        if local_embeddings.dim() != 2 or local_embeddings.shape[1] != embedding_size:
            raise ValueError(f"embeddings must have shape (B, {embedding_size}), got "
                             f"{tuple(local_embeddings.shape)}")
        return all_gather_with_grad(local_embeddings.float())

    def gather_labels(self, local_labels: torch.Tensor) -> torch.Tensor:
        """(B,) or (B, 1) int64 global ids -> (W*B,) columns of this rank's shard, -1 elsewhere.

        The checks read only metadata (no host sync)."""
        if get_world_size() != self.world_size:
            raise RuntimeError(f"this head was built for world size {self.world_size} but the process group "
                               f"now has {get_world_size()}; build heads after init_distributed()")
        if local_labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64 (torch.long) class ids, got {local_labels.dtype}; convert "
                            f"them in the data loader with `.long()` (a float tensor here usually means "
                            f"the embeddings were passed as labels: every head takes "
                            f"head(embeddings, labels, teacher=...))")
        if local_labels.numel() == 0:
            raise ValueError("the batch is empty; every rank needs at least one sample per step")
        local = all_gather_tensor(local_labels.reshape(-1)) - self.class_start
        return torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> HeadOutput:
        """Global-mean margin-softmax loss (0-dim, identical on all ranks) and its stats.

        `embeddings` (N, E) gathered and `centres` (num_local, E) this rank's, any norm; `labels` (N,)
        from `gather_labels`. The stats: `train/target_prob`, which every head shares (so it is not
        under `distill/`), and the `margin/` statistics of a norm-aware margin.
        """
        if self.sampler is not None:
            index, labels = self.sampler.sample(labels, self.num_local, self.num_sample)
            centres = centres[index]  # (S, E); a learned weight gets a dense, zero-filled gradient
        with torch.autocast(device_type=embeddings.device.type, enabled=False):  # fp32 logits, as the host
            cos = (F.normalize(embeddings.float()) @ F.normalize(centres.float()).t()).clamp(-1.0, 1.0)  # (N, c)
            norms = embeddings.detach().float().norm(dim=1) if self.margin_needs_norms else None  # (N,)
        if norms is None:
            logits, stats = self.margin_loss(cos, labels), {}
        else:  # the statistics after this call's update
            logits, stats = self.margin_loss(cos, labels, norms), self.margin_loss.stats()
        loss, p_target = distributed_cross_entropy(logits, labels)
        return HeadOutput(loss, {**stats, "train/target_prob": p_target.mean()})


class ShardedHead(nn.Module):
    """What every head shares: its `ShardedMarginSoftmax`, the gathers, the sampler state and the
    forward of a head that only classifies.

    Subclasses add the centres (`weight`); a head that distils overrides `forward(local_embeddings
    (B, E), local_labels (B,), *, teacher=None (B, E)) -> HeadOutput`. Their registration's
    `HeadSpec` says whether `teacher` is required (heads that do not distil ignore it).
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int, sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.margin_softmax = ShardedMarginSoftmax(margin_loss, num_classes, sample_rate, seed)
        self.class_start, self.num_local = self.margin_softmax.class_start, self.margin_softmax.num_local

    def gather(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, E), (B,) -> (W*B, E) differentiable fp32 embeddings and (W*B,) local columns or -1."""
        if local_labels.numel() != local_embeddings.shape[0]:
            raise ValueError(f"{local_embeddings.shape[0]} embeddings but {local_labels.numel()} labels; "
                             f"pass one label per embedding")
        embeddings = self.margin_softmax.gather_embeddings(local_embeddings, self.embedding_size)
        return embeddings, self.margin_softmax.gather_labels(local_labels)

    def check_teacher(self, local_embeddings: torch.Tensor, teacher: Optional[torch.Tensor]) -> None:
        """Refuse a missing or mis-shaped teacher batch, naming the head and the call."""
        name = type(self).__name__
        if teacher is None:
            raise TypeError(f"{name} needs the teacher embeddings: head(embeddings, labels, teacher=teacher)")
        if not teacher.is_floating_point():
            raise TypeError(f"{name}: teacher embeddings must be floating point, got {teacher.dtype}; "
                            f"the call is head(embeddings, labels, teacher=teacher)")
        if teacher.shape != local_embeddings.shape:
            raise ValueError(f"{name}: teacher embeddings {tuple(teacher.shape)} and "
                             f"student embeddings {tuple(local_embeddings.shape)} must have the same shape")

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor, *,
                teacher: Optional[torch.Tensor] = None) -> HeadOutput:
        """Gather, then margin softmax against this head's `weight` (num_local, E)."""
        embeddings, labels = self.gather(local_embeddings, local_labels)
        return self.margin_softmax(embeddings, labels, self.weight)

    def sampler_state(self) -> Optional[torch.Tensor]:
        """The negative sampler's generator state (None without sampling), for checkpoints."""
        sampler = self.margin_softmax.sampler
        return None if sampler is None else sampler.state()

    def load_sampler_state(self, state: Optional[torch.Tensor]) -> None:
        if self.margin_softmax.sampler is not None and state is not None:
            self.margin_softmax.sampler.load_state(state)


class PartialFC(ShardedHead):
    """Learned, sharded margin-softmax classifier: arcface_torch's `PartialFC_V2`.

    `state_dict()` holds only `weight` (num_local, E), N(0, 0.01) at start, so arcface_torch's
    `state_dict_softmax_fc` loads unchanged.
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int, sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__(margin_loss, embedding_size, num_classes, sample_rate, seed)
        self.weight = nn.Parameter(init_centres(self.num_local, embedding_size))


# ---------------------------------------------------------------- registration

@HEADS.register(spec=HeadSpec(learned_weights=True))
def standalone(args: HeadArgs) -> nn.Module:
    """The student's own learned classifier (arcface_torch behaviour)."""
    return PartialFC(args.margin_loss, args.embedding_size, args.num_classes, args.sample_rate, args.seed)
