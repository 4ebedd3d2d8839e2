"""heads/margins.py: ArcFace/CosFace values, the two ArcFace gradients, the pi guard, filtering."""
from __future__ import annotations

import math

import pytest
import torch

from insightface_adadistill.heads.margins import CombinedMarginLoss, arcface_target, build_margin_loss

COS = torch.tensor([[0.5, 0.2, -0.1],
                    [0.3, 0.8, 0.4],
                    [0.9, 0.1, 0.0]])
LABELS = torch.tensor([0, 1, -1])  # the last row's class lives on another rank


def test_arcface_values_by_hand():
    out = CombinedMarginLoss(64.0, 1.0, 0.5, 0.0)(COS, LABELS)
    expected = COS * 64.0
    expected[0, 0] = 64.0 * math.cos(math.pi / 3 + 0.5)  # cos 0.5 = cos(pi/3)
    expected[1, 1] = 64.0 * math.cos(math.acos(0.8) + 0.5)
    torch.testing.assert_close(out, expected)
    assert out[0, 0].item() == pytest.approx(64.0 * 0.0235966, abs=1e-4)  # sin(pi/2 - pi/3 - 0.5)


def test_cosface_values_by_hand():
    out = CombinedMarginLoss(64.0, 1.0, 0.0, 0.35)(COS, LABELS.view(-1, 1))  # (N, 1) labels as the host
    expected = COS * 64.0
    expected[0, 0] = 64.0 * (0.5 - 0.35)
    expected[1, 1] = 64.0 * (0.8 - 0.35)
    torch.testing.assert_close(out, expected)


def test_straight_through_gradient_is_s_everywhere():
    cos = COS.clone().requires_grad_()
    CombinedMarginLoss(64.0, 1.0, 0.5, 0.0)(cos, LABELS).sum().backward()
    assert torch.equal(cos.grad, torch.full_like(COS, 64.0))


def test_exact_gradient_is_the_derivative_of_cos_theta_plus_m():
    x = torch.tensor([-0.5, -0.2, 0.1, 0.5, 0.95], dtype=torch.float64, requires_grad=True)
    arcface_target(x, 0.5, exact_grad=True).sum().backward()
    reference = x.detach().clone().requires_grad_()
    torch.cos(torch.acos(reference) + 0.5).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    torch.testing.assert_close(arcface_target(x, 0.5, exact_grad=True), torch.cos(torch.acos(x) + 0.5))


def test_exact_gradient_through_the_module_only_touches_targets():
    cos = COS.clone().requires_grad_()
    CombinedMarginLoss(2.0, 1.0, 0.5, 0.0, exact_grad=True)(cos, LABELS).sum().backward()
    expected = torch.full_like(COS, 2.0)
    for row, x in ((0, 0.5), (1, 0.8)):
        expected[row, LABELS[row]] = 2.0 * (math.cos(0.5) + math.sin(0.5) * x / math.sqrt(1 - x * x))
    torch.testing.assert_close(cos.grad, expected)


def test_pi_guard_only_in_exact_mode():
    m = 0.5
    x = torch.tensor([math.cos(math.pi - 0.2)], requires_grad=True)  # theta + m > pi
    guarded = arcface_target(x, m, exact_grad=True)
    assert guarded.item() == pytest.approx(x.item() - m * math.sin(m))
    guarded.backward()
    assert x.grad.item() == pytest.approx(1.0)
    host = arcface_target(x.detach(), m, exact_grad=False)  # current host: no guard
    assert host.item() == pytest.approx(math.cos(math.pi - 0.2 + m), abs=1e-6)


def test_exact_gradient_is_finite_at_plus_minus_one():
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    arcface_target(x, 0.5, exact_grad=True).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_interclass_filtering():
    cos = COS.clone().requires_grad_()
    out = CombinedMarginLoss(1.0, 1.0, 0.0, 0.35, interclass_filtering_threshold=0.35)(cos, LABELS)
    # > 0.35 is zeroed except the own target; the row with label -1 is filtered in full
    expected = torch.tensor([[0.5 - 0.35, 0.2, -0.1],
                             [0.3, 0.8 - 0.35, 0.0],
                             [0.0, 0.1, 0.0]])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.equal(cos.grad, torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 1, 1]]))


def test_no_columns_is_allowed():
    empty = torch.zeros(3, 0)
    assert CombinedMarginLoss()(empty, torch.full((3,), -1)).shape == (3, 0)


@pytest.mark.parametrize("margins", [(0.9, 0.4, 0.15), (1.0, 0.5, 0.4), (1.2, 0.0, 0.0), (1.0, -0.1, 0.0),
                                     (1.0, 0.0, -0.2)])
def test_unsupported_margins_are_refused(margins):
    with pytest.raises(ValueError, match=r"ArcFace margin_list=\(1.0, m, 0.0\) or CosFace"):
        CombinedMarginLoss(64.0, *margins)


def test_build_margin_loss():
    arc = build_margin_loss((1.0, 0.45, 0.0), "exact")
    assert arc.is_arcface and arc.exact_grad and arc.s == 64.0 and arc.m2 == 0.45
    cos = build_margin_loss([1, 0, 0.35])
    assert not cos.is_arcface and not cos.exact_grad
    with pytest.raises(ValueError, match="margin_grad"):
        build_margin_loss((1.0, 0.5, 0.0), "true")
    with pytest.raises(ValueError, match="3 numbers"):
        build_margin_loss((1.0, 0.5))
