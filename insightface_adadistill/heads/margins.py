"""Margins on the target cosine: ArcFace (Deng et al., CVPR 2019) and CosFace (Wang et al., CVPR 2018)
with arcface_torch's `CombinedMarginLoss(s, m1, m2, m3)` interface, and AdaFace (Kim, Jain, Liu,
CVPR 2022), whose margin adapts to each sample's feature norm (`AdaFaceMargin`).

A margin is a callable `(cos (N, C), labels (N,)) -> (N, C)` scaled logits, labels being the local
column or -1; one with `needs_norms = True` (AdaFace) also takes the (N,) detached norms of the
gathered embeddings and provides `stats()` (docs/heads.md, "The seam"). The config's `margin` key
picks one of `MARGINS`.

Margins are given as arcface_torch's `margin_list = (m1, m2, m3)`: ArcFace (1, m, 0), target logit
s * cos(theta + m); CosFace (1, 0, m), target logit s * (cos theta - m); every non-target logit is
s * cos theta. Any other form (SphereFace m1 != 1, combined arc + cos margins) is refused, where
arcface_torch silently picks one branch.

ArcFace gradient, two choices (`margin_grad`; why, and which run each matches: docs/method.md):
- straight-through (default; current arcface_torch): d out / d cos = s for every entry, as the
  host's in-place cos(theta + m) under no_grad. No guard for theta + m > pi: the gradient ignores it.
- exact: the true derivative, cos m + sin m * x / sqrt(1 - x^2) (1 - x^2 clamped at 1e-12), with the
  historical arcface_torch fallback where cos theta <= cos(pi - m), past which that derivative
  changes sign: the target is then cos theta - m sin m (gradient 1). The published AdaDistill code
  has no such fallback, so this mode matches it only where theta + m <= pi.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

MARGINS = ("margin_list", "adaface")  # config `margin`: arcface_torch's margin_list, or AdaFace
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
    if m1 == 1.0 and ((m3 == 0.0 and 0.0 <= m2 < math.pi) or (m2 == 0.0 and 0.0 < m3 < 2.0)):
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


def _scaled_logits(cos: torch.Tensor, labels: torch.Tensor, s: float,
                   target_logit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """s * cos, each positive row's target cosine t (N,) replaced by `target_logit(t)`.

    Masks rather than nonzero(): no data-dependent shapes, so no host sync on CUDA.
    """
    column = labels.clamp(min=0).unsqueeze(1)  # (N, 1)
    target = cos.gather(1, column).squeeze(1)  # (N,)
    target = torch.where(labels >= 0, target_logit(target), target)
    return cos.scatter(1, column, target.unsqueeze(1)) * s


class CombinedMarginLoss(nn.Module):
    """Scaled margin logits: (N, C) cosines in [-1, 1] and (N,) local labels (-1: not here) -> (N, C).

    `s` is the scale (arcface_torch always uses 64), `m1, m2, m3` arcface_torch's margin_list
    (`MARGIN_FORMS`); `interclass_filtering_threshold` > 0 turns on `interclass_filter`; `exact_grad`
    picks the ArcFace gradient, straight-through (False, the host's) or exact (module doc).
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
        if self.is_arcface:
            return _scaled_logits(cos, labels, self.s, lambda target: arcface_target(target, self.m2, self.exact_grad))
        return _scaled_logits(cos, labels, self.s, lambda target: target - self.m3)

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
    return CombinedMarginLoss(s, *(float(m) for m in margin_list), interclass_filtering_threshold,
                              exact_grad=margin_grad == "exact")


# ---------------------------------------------------------------- AdaFace

ADAFACE_EPS = 1e-3  # the cosine, angle and std guard of the AdaFace paper's recipe
ADAFACE_NORM_RANGE = (1e-3, 100.0)  # feature norms are clipped to this before use
ADAFACE_START = (20.0, 100.0)  # initial running mean and std of the norms
# The one rule per AdaFace parameter (the config keys' checks use them too): an additive margin of
# up to 2m must stay below 2, h = 0 is CosFace, t_alpha = 1 uses each batch's statistics alone.
ADAFACE_RULES: Dict[str, Tuple[Callable[[float], bool], str]] = {
    "adaface_m": (lambda m: 0.0 < m < 1.0, "in (0, 1)"),
    "adaface_h": (lambda h: h >= 0.0, ">= 0 (0 gives CosFace with m)"),
    "adaface_t_alpha": (lambda t: 0.0 < t <= 1.0, "in (0, 1]"),
}


class AdaFaceMargin(nn.Module):
    """AdaFace's quality-adaptive margin: (N, C) cosines, (N,) local labels (-1: not here) and (N,)
    feature norms -> (N, C) scaled logits.

    Every cosine is clipped to [-1 + eps, 1 - eps] (eps = 1e-3). Each sample's norm n, clipped to
    [0.001, 100], gives the scaler z = clip(h * (n - mean) / (std + eps), -1, 1); the target logit
    is s * (cos(clip(theta - m * z, eps, pi - eps)) - m - m * z), every other one s * cos theta
    (docs/heads.md). The gradient is the true derivative (as the authors' code), none through n.

    Buffers `norm_mean`, `norm_std` (0-dim, start at 20 and 100): the running statistics of the
    norms (docs/heads.md), moved before use in training mode, only read in eval mode. The caller
    passes the whole gathered batch's norms, so every rank holds the same statistics.
    """

    needs_norms = True

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__()
        for name, value in (("adaface_m", m), ("adaface_h", h), ("adaface_t_alpha", t_alpha)):
            ok, rule = ADAFACE_RULES[name]
            if not ok(value):
                raise ValueError(f"{name} must be {rule}, got {value}")
        self.s, self.m, self.h, self.t_alpha = s, m, h, t_alpha
        self.register_buffer("norm_mean", torch.tensor(ADAFACE_START[0]))
        self.register_buffer("norm_std", torch.tensor(ADAFACE_START[1]))

    @torch.no_grad()
    def scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """(N,) norms -> (N,) z in [-1, 1]; in training mode the running statistics move first."""
        norms = norms.detach().float().clamp(*ADAFACE_NORM_RANGE)
        if self.training:
            if norms.numel() < 2:
                raise ValueError("the AdaFace margin needs a global batch of at least 2 samples (it "
                                 "standardises each norm by the batch's standard deviation)")
            batch = torch.stack([norms.mean(), norms.std()])
            moved = self.t_alpha * batch + (1.0 - self.t_alpha) * torch.stack([self.norm_mean, self.norm_std])
            finite = torch.isfinite(batch).all()  # a NaN batch (nonfinite_loss='skip') leaves them as they were
            self.norm_mean.copy_(torch.where(finite, moved[0], self.norm_mean))
            self.norm_std.copy_(torch.where(finite, moved[1], self.norm_std))
        return (self.h * (norms - self.norm_mean) / (self.norm_std + ADAFACE_EPS)).clamp(-1.0, 1.0)

    def forward(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1)
        if norms.shape != labels.shape:
            raise ValueError(f"AdaFaceMargin got {norms.numel()} norms for {labels.numel()} labels")
        z = self.scaler(norms)  # also on a rank without columns: the statistics stay identical
        cos = cos.clamp(-1.0 + ADAFACE_EPS, 1.0 - ADAFACE_EPS)
        if cos.shape[1] == 0:
            return cos * self.s
        return _scaled_logits(cos, labels, self.s, lambda t: torch.cos(
            (torch.acos(t) - self.m * z).clamp(ADAFACE_EPS, math.pi - ADAFACE_EPS)) - (self.m + self.m * z))

    def stats(self) -> Dict[str, torch.Tensor]:
        """The running statistics, by their TensorBoard tags (detached copies, no host sync)."""
        return {"margin/norm_mean": self.norm_mean.detach().clone(),
                "margin/norm_std": self.norm_std.detach().clone()}

    def extra_repr(self) -> str:
        return f"adaface, s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


def build_margin(margin: str, margin_list: Sequence[float], margin_grad: str = "straight_through",
                 interclass_filtering_threshold: float = 0.0, adaface_m: float = 0.4, adaface_h: float = 0.333,
                 adaface_t_alpha: float = 0.01) -> nn.Module:
    """The margin the config's `margin` key names, built from the config keys of the same names."""
    if margin == "margin_list":
        return build_margin_loss(margin_list, margin_grad, interclass_filtering_threshold)
    if margin != "adaface":
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    if interclass_filtering_threshold > 0:
        raise ValueError("interclass_filtering_threshold applies to the margin_list margin only; "
                         "set it to 0 with margin='adaface'")
    return AdaFaceMargin(64.0, adaface_m, adaface_h, adaface_t_alpha)
