"""The head registry: each head's factory and its declaration of what it needs from a run.

A head module registers its factory with `@HEADS.register(spec=HeadSpec(...))`. The spec is the
one place that says what the head needs; the config check, the trainer, `host-train`, the demo and
`build_head` all read it, so adding a head is one new module plus its tests (docs/heads.md).
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from insightface_adadistill.heads.margins import MARGINS
from insightface_adadistill.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")
STANDALONE = "standalone"  # the head `distill = None` selects


@dataclass(frozen=True)
class HeadSpec:
    """What a registered head needs from the run (docs/heads.md)."""

    teacher_embeddings: bool = False  # takes the teacher's (B, E) embeddings every step (`teacher=`)
    teacher_classifier: bool = False  # is built from the teacher's trained (C, E) classifier
    learned_weights: bool = False  # owns parameters the optimizer steps
    margins: Tuple[str, ...] = MARGINS  # the values of config `margin` it accepts


@dataclass(frozen=True)
class HeadArgs:
    """Every head option; each registered factory reads the ones it needs.

    `margin_loss` maps (N, c) cosines and (N,) local labels to (N, c) scaled logits
    (`build_margin`'s result); `teacher_classifier` is the teacher's full (C, E) classifier, given to
    the heads whose spec has `teacher_classifier` and refused by the others.
    """

    margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    embedding_size: int
    num_classes: int
    _: KW_ONLY
    sample_rate: float = 1.0
    seed: int = 0
    alpha: Any = "weighted"
    teacher_classifier: Optional[torch.Tensor] = None
    feature_kd_weight: float = 1.0


def head_name(distill: Optional[str]) -> str:
    """The registered head of config `distill` (None: the standalone head)."""
    return STANDALONE if distill is None else distill


def head_spec(distill: Optional[str]) -> HeadSpec:
    """The declaration of the head config `distill` selects."""
    return HEADS.spec(head_name(distill))


def heads_with(need: str) -> Tuple[str, ...]:
    """The registered head names whose spec sets `need` (e.g. 'teacher_embeddings'), sorted."""
    return tuple(name for name in HEADS.names() if getattr(HEADS.spec(name), need))


def build_head(distill: Optional[str], args: HeadArgs) -> nn.Module:
    """The head for config `distill` (None or a registered name), built from `args`.

    The teacher's classifier is refused by a head that does not declare it, and required by one
    that does, so a run never silently ignores it.
    """
    name = head_name(distill)
    spec = HEADS.spec(name)
    if spec.teacher_classifier and args.teacher_classifier is None:
        raise ValueError(f"distill={name!r} needs the teacher's classifier: set teacher_classifier")
    if not spec.teacher_classifier and args.teacher_classifier is not None:
        users = " or ".join(f"distill={n!r}" for n in heads_with("teacher_classifier"))
        raise ValueError(f"teacher_classifier is only used by {users}, not {name!r}; remove it from the config")
    return HEADS.create(name, args=args)
