"""Additive margins on the target cosine: ArcFace (Deng et al., CVPR 2019) and CosFace (Wang et al.,
CVPR 2018), with arcface_torch's `CombinedMarginLoss(s, m1, m2, m3)` interface.

Margins are given as arcface_torch's `margin_list = (m1, m2, m3)`:
  ArcFace  (1, m, 0): target logit s * cos(theta + m)
  CosFace  (1, 0, m): target logit s * (cos theta - m)
Every non-target logit is s * cos theta. Any other form (SphereFace m1 != 1, combined arc + cos
margins) is refused, where arcface_torch silently picks one branch.

ArcFace gradient, two choices:
- straight-through (default; current arcface_torch): d out / d cos = s for every entry. The host
  computes cos(theta + m) in place under no_grad, so autograd sees the identity; we keep it for
  parity. No guard for theta + m > pi: the gradient ignores the forward value anyway.
- exact: the true derivative of cos(theta + m) = x cos m - sqrt(1 - x^2) sin m, i.e.
  cos m + sin m * x / sqrt(1 - x^2). Past theta + m > pi that derivative changes sign and would push
  the target away from its centre, so this mode also takes the historical arcface_torch fallback
  (the formulation of every model-zoo log): where cos theta <= cos(pi - m), the target is
  cos theta - m sin m (gradient 1). The published AdaDistill code has no such fallback (it computes
  cos(theta + m) everywhere), so this mode matches it only where theta + m <= pi; see
  docs/method.md. 1 - x^2 is clamped at 1e-12 so x = +-1 gives a finite gradient.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

_ARCFACE_FORM = "ArcFace (1, m, 0) with 0 <= m < pi"
_COSFACE_FORM = "CosFace (1, 0, m) with 0 < m < 2"
MARGIN_FORMS = f"{_ARCFACE_FORM} or {_COSFACE_FORM}"
MARGIN_GRADS = ("straight_through", "exact")
_MARGIN_FIX = ("use ArcFace margin_list=(1.0, m, 0.0) or CosFace margin_list=(1.0, 0.0, m), "
               "e.g. m = 0.5 for ArcFace or m = 0.4 for CosFace")


def margin_list_problem(margin_list: Any) -> Optional[str]:
    """What is wrong with `margin_list` and the fix, or None: the one rule for the loss and the config.

    arcface_torch's CombinedMarginLoss has exactly two forms; anything else either raises there or
    silently drops a margin (e.g. (1, 0.5, 0.4) is CosFace). m < pi keeps theta + m inside the
    cosine's useful range; a CosFace m >= 2 pushes every target below every other logit.
    """
    numbers = [m for m in margin_list if isinstance(m, (int, float)) and not isinstance(m, bool)]
    if len(margin_list) != 3 or len(numbers) != 3:
        return f"must be 3 numbers (m1, m2, m3); {_MARGIN_FIX}"
    m1, m2, m3 = numbers
    if m1 == 1.0 and m3 == 0.0 and 0.0 <= m2 < math.pi:
        return None
    if m1 == 1.0 and m2 == 0.0 and 0.0 < m3 < 2.0:
        return None
    return f"is neither {_ARCFACE_FORM} nor {_COSFACE_FORM}; {_MARGIN_FIX}"


class _StraightThroughArc(torch.autograd.Function):
    """Forward cos(arccos(x) + m); backward the identity, as arcface_torch's in-place no-grad trick."""

    @staticmethod
    def forward(ctx, cos: torch.Tensor, margin: float) -> torch.Tensor:
        return torch.cos(torch.acos(cos) + margin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def arcface_target(cos: torch.Tensor, margin: float, exact_grad: bool = False) -> torch.Tensor:
    """cos(theta + margin) for target cosines `cos` (M,), gradient straight-through or exact (module doc)."""
    if not exact_grad:
        return _StraightThroughArc.apply(cos, margin)
    sin = torch.sqrt((1.0 - cos * cos).clamp(min=1e-12))
    shifted = cos * math.cos(margin) - sin * math.sin(margin)
    fallback = cos - margin * math.sin(margin)  # historical host: cos - m sin(pi - m)
    return torch.where(cos > math.cos(math.pi - margin), shifted, fallback)


def cosface_target(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """cos theta - margin for target cosines `cos` (M,)."""
    return cos - margin


def interclass_filter(cos: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero every cosine above `threshold` except each positive row's own target (arcface_torch 2.5).

    Zeroed entries still enter the softmax as e^0 and get no gradient; rows with label -1 are
    filtered in full. cos (N, C) with C >= 1, labels (N,) local column or -1.
    """
    with torch.no_grad():
        keep = cos <= threshold
        column = labels.clamp(min=0).unsqueeze(1)  # (N, 1)
        keep.scatter_(1, column, keep.gather(1, column) | (labels >= 0).unsqueeze(1))
    return cos * keep.to(cos.dtype)


class CombinedMarginLoss(nn.Module):
    """Scaled margin logits: (N, C) cosines in [-1, 1] and (N,) local labels (-1: not here) -> (N, C).

    Args:
        s: scale (arcface_torch always uses 64).
        m1, m2, m3: arcface_torch's margin_list; see `MARGIN_FORMS`.
        interclass_filtering_threshold: > 0 turns on inter-class filtering (`interclass_filter`).
        exact_grad: ArcFace gradient, straight-through (False, host) or exact (True); module doc.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 interclass_filtering_threshold: float = 0.0, exact_grad: bool = False) -> None:
        super().__init__()
        problem = margin_list_problem((m1, m2, m3))
        if problem is not None:
            raise ValueError(f"margin_list ({m1}, {m2}, {m3}) {problem}")
        if not 0.0 <= interclass_filtering_threshold < 1.0:
            raise ValueError(f"interclass_filtering_threshold must be in [0, 1), got "
                             f"{interclass_filtering_threshold}")
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold
        self.exact_grad = exact_grad
        self.is_arcface = m3 == 0.0

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1)
        if cos.shape[1] == 0:  # a sampled shard with no column on this rank
            return cos * self.s
        if self.interclass_filtering_threshold > 0:
            cos = interclass_filter(cos, labels, self.interclass_filtering_threshold)
        # Masks rather than nonzero(): no data-dependent shapes, so no host sync on CUDA.
        positive = labels >= 0
        column = labels.clamp(min=0).unsqueeze(1)  # (N, 1)
        target = cos.gather(1, column).squeeze(1)  # (N,)
        if self.is_arcface:
            with_margin = arcface_target(target, self.m2, self.exact_grad)
        else:
            with_margin = cosface_target(target, self.m3)
        target = torch.where(positive, with_margin, target)
        return cos.scatter(1, column, target.unsqueeze(1)) * self.s

    def extra_repr(self) -> str:
        kind = "arcface" if self.is_arcface else "cosface"
        grad = "exact" if self.exact_grad else "straight_through"
        return (f"{kind}, s={self.s}, margin_list=({self.m1}, {self.m2}, {self.m3}), grad={grad}, "
                f"interclass_filtering_threshold={self.interclass_filtering_threshold}")


def build_margin_loss(margin_list: Sequence[float], margin_grad: str = "straight_through",
                      interclass_filtering_threshold: float = 0.0, s: float = 64.0) -> CombinedMarginLoss:
    """CombinedMarginLoss from the config's `margin_list` and `margin_grad`."""
    problem = margin_list_problem(margin_list)
    if problem is not None:
        raise ValueError(f"margin_list {tuple(margin_list)!r} {problem}")
    if margin_grad not in MARGIN_GRADS:
        raise ValueError(f"margin_grad must be one of {MARGIN_GRADS}, got {margin_grad!r}")
    m1, m2, m3 = (float(m) for m in margin_list)
    return CombinedMarginLoss(s, m1, m2, m3, interclass_filtering_threshold,
                              exact_grad=margin_grad == "exact")
