"""Optimizer: host group order, frozen parameters kept in their group, empty head group, momentum honoured."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from insightface_adadistill.training.optim import build_optimizer, host_param_groups


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(4, 3)
        self.features.weight.requires_grad_(False)  # like iresnet's frozen all-ones features.weight
        self.fc = nn.Linear(3, 2)


class CentreHead(nn.Module):
    """AdaDistill-like: the class centres are a buffer, so the head has no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", torch.zeros(5, 2))


def test_groups_follow_host_order_and_keep_frozen_parameters():
    backbone, head = TinyBackbone(), nn.Linear(2, 5, bias=False)
    groups = host_param_groups(backbone, head)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    # arcface_torch: SGD(params=[{"params": backbone.parameters()}, {"params": pfc.parameters()}])
    assert groups[0]["params"] == list(backbone.parameters())
    assert [tuple(p.shape) for p in groups[0]["params"]] == [(3, 4), (3,), (2, 3), (2,)]
    assert groups[1]["params"] == [head.weight]
    optimizer = build_optimizer("sgd", groups, lr=0.1)
    backbone.fc(backbone.features(torch.ones(1, 4))).sum().backward()
    frozen_before = backbone.features.weight.clone()
    optimizer.step()
    assert torch.equal(backbone.features.weight, frozen_before)  # never gets a gradient


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_parameterless_head_keeps_an_empty_second_group(kind):
    backbone = TinyBackbone()
    optimizer = build_optimizer(kind, host_param_groups(backbone, CentreHead()), lr=0.1)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["params"] == []
    backbone.fc(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert len(optimizer.state_dict()["param_groups"]) == 2


def test_sgd_honours_momentum_and_weight_decay():
    def after_two_steps(momentum: float) -> torch.Tensor:
        weight = nn.Parameter(torch.ones(1))
        optimizer = build_optimizer("sgd", [{"params": [weight]}, {"params": []}], lr=0.1,
                                    momentum=momentum, weight_decay=0.0)
        for _ in range(2):
            weight.grad = torch.ones(1)
            optimizer.step()
        return weight.detach()

    assert after_two_steps(0.0) == pytest.approx(1 - 0.1 - 0.1)
    assert after_two_steps(0.5) == pytest.approx(1 - 0.1 - 0.1 * 1.5)  # buffer 1, then 0.5*1 + 1
    optimizer = build_optimizer("sgd", [{"params": [nn.Parameter(torch.ones(1))]}], lr=0.1,
                                momentum=0.7)
    group = optimizer.param_groups[0]
    settings = (group["momentum"], group["nesterov"], group["dampening"], group["weight_decay"])
    assert settings == (0.7, False, 0, 5e-4)


def test_adamw_uses_default_betas():
    optimizer = build_optimizer("adamw", [{"params": [nn.Parameter(torch.ones(1))]}], lr=1e-3,
                                weight_decay=0.05)
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.05)


def test_errors_name_allowed_values():
    groups = host_param_groups(TinyBackbone(), CentreHead())
    with pytest.raises(ValueError, match="'lamb'.*sgd, adamw"):
        build_optimizer("lamb", groups, lr=0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("sgd", host_param_groups(frozen, CentreHead()), lr=0.1)
