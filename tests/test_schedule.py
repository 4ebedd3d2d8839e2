"""LR schedules: the host's verified sequences, the AdaDistill step drops, and exact resume."""
from __future__ import annotations

import pytest
import torch

from insightface_adadistill.serialization import load_file, save_file_atomic
from insightface_adadistill.training.schedule import (
    EpochStepLR, PolynomialWarmupLR, build_scheduler, poly_warmup_factor, scaled_lr)


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _lrs(scheduler, n: int) -> list:
    """The LR used by each of the next `n` iterations (read before the step, as the loop does)."""
    used = []
    for _ in range(n):
        used.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return used


def test_poly_warmup_matches_verified_host_sequence():
    scheduler = PolynomialWarmupLR(_optimizer(), warmup_steps=3, total_steps=10)
    expected = [0.1, 0.1 / 3, 0.2 / 3, 0.1] + [0.1 * (1 - j / 7) for j in range(1, 8)] + [0.0]
    assert _lrs(scheduler, 12) == pytest.approx(expected, abs=1e-12)
    assert expected[-3:] == pytest.approx([0.0142857, 0.0, 0.0], abs=1e-6)


def test_poly_power_two_matches_model_zoo_logs():
    # ms1mv3_r50 prints 0.0250 at step 50580 of 101160; ms1mv3_mbf 0.0563 at 50580 of 202320 (host logs).
    assert 0.1 * poly_warmup_factor(50580, 0, 101160, power=2.0) == pytest.approx(0.025)
    assert 0.1 * poly_warmup_factor(50580, 0, 202320, power=2.0) == pytest.approx(0.05625)
    scheduler = PolynomialWarmupLR(_optimizer(), warmup_steps=0, total_steps=4, power=2.0)
    assert _lrs(scheduler, 6) == pytest.approx([0.1, 0.05625, 0.025, 0.00625, 0.0, 0.0])


def test_negative_warmup_means_no_warmup():
    with_negative = _lrs(PolynomialWarmupLR(_optimizer(), warmup_steps=-1, total_steps=5), 7)
    without = _lrs(PolynomialWarmupLR(_optimizer(), warmup_steps=0, total_steps=5), 7)
    assert with_negative == pytest.approx(without)
    assert with_negative[:3] == pytest.approx([0.1, 0.08, 0.06])


def test_step_schedule_drops_at_the_start_of_adadistill_epochs():
    steps_per_epoch = 3
    scheduler = EpochStepLR(_optimizer(), steps_per_epoch, [8, 14, 20, 25])
    used = _lrs(scheduler, 26 * steps_per_epoch)
    per_epoch = [used[e * steps_per_epoch:(e + 1) * steps_per_epoch] for e in range(26)]
    for epoch_1based, lrs in enumerate(per_epoch, start=1):
        drops = sum(d <= epoch_1based for d in (8, 14, 20, 25))
        assert lrs == pytest.approx([0.1 * 0.1 ** drops] * steps_per_epoch), epoch_1based
    assert per_epoch[6][-1] == pytest.approx(0.1) and per_epoch[7][0] == pytest.approx(0.01)


@pytest.mark.parametrize("kind", ["poly", "step"])
def test_state_dict_round_trip_continues_exactly(kind, tmp_path):
    kwargs = dict(warmup_steps=2, total_steps=12, steps_per_epoch=2, power=2.0, drop_epochs=[2, 4])
    reference = build_scheduler(_optimizer(), kind, **kwargs)
    _lrs(reference, 5)
    save_file_atomic(reference.state_dict(), tmp_path / "sched.pt")

    restored = build_scheduler(_optimizer(), kind, **kwargs)
    restored.load_state_dict(load_file(tmp_path / "sched.pt"))  # weights_only: plain values only
    restored.optimizer.param_groups[0]["lr"] = reference.optimizer.param_groups[0]["lr"]  # optimizer's job
    assert restored.state_dict() == reference.state_dict()
    assert _lrs(restored, 8) == _lrs(reference, 8)


def test_two_param_groups_get_the_same_schedule():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.1)
    scheduler = PolynomialWarmupLR(optimizer, warmup_steps=0, total_steps=4)
    _lrs(scheduler, 2)
    assert scheduler.get_last_lr() == pytest.approx([0.05, 0.05])


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="'cosine'.*poly, step"):
        build_scheduler(_optimizer(), "cosine")
    with pytest.raises(ValueError, match="warmup_epoch"):
        PolynomialWarmupLR(_optimizer(), warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="1-based"):
        EpochStepLR(_optimizer(), 10, [0, 8])


def test_scaled_lr():
    assert scaled_lr(0.1, 512, None) == 0.1
    assert scaled_lr(0.1, 256, 512) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="lr_scale_batch"):
        scaled_lr(0.1, 256, 0)
