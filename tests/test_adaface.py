"""The AdaFace margin: the formula on hand-computed cases, the running norm statistics (EMA, order,
global batch), every margin-softmax head with it, 2 ranks x B == 1 rank x 2B, exact resume, config."""
from __future__ import annotations

import math
import os
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

from dist_utils import run_in_processes
from insightface_adadistill.commands.train import main as train_main
from insightface_adadistill.config import ConfigError, load_config
from insightface_adadistill.heads import AdaFaceMargin, HeadArgs, build_head, build_margin, head_spec, reshard_weight
from insightface_adadistill.heads.margins import ADAFACE_EPS, CombinedMarginLoss
from run_utils import REPO, TINY, TORCHRUN, assert_same_states, latest_states

S, M = 64.0, 0.4
MEAN, STD = "margin_softmax.margin_loss.norm_mean", "margin_softmax.margin_loss.norm_std"  # head state keys


def frozen_margin(mean: float, std: float, h: float = 1.0) -> AdaFaceMargin:
    """Eval mode (statistics only read), std chosen so that std + eps is `std`."""
    margin = AdaFaceMargin(S, M, h).eval()
    margin.norm_mean.fill_(mean)
    margin.norm_std.fill_(std - ADAFACE_EPS)
    return margin


def expected_target(cos: float, z: float) -> float:
    theta = min(max(math.acos(cos) - M * z, ADAFACE_EPS), math.pi - ADAFACE_EPS)
    return S * (math.cos(theta) - M - M * z)


# ---------------------------------------------------------------- the formula

def test_scaler_standardises_clips_the_norm_and_saturates_at_plus_minus_one():
    margin = frozen_margin(mean=10.0, std=4.0)
    norms = torch.tensor([2.0, 8.0, 10.0, 12.0, 14.0, 30.0, 0.0, 500.0])
    z = margin.scaler(norms)
    # (n - 10) / 4 with h = 1; n = 0 counts as 0.001 and 500 as 100 before that
    torch.testing.assert_close(z, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.0, -1.0, 1.0]))
    assert frozen_margin(10.0, 4.0, h=0.333).scaler(torch.tensor([12.0])).item() == pytest.approx(0.333 * 0.5)
    assert margin.scaler(torch.tensor([0.0])).item() == -1.0 and margin.scaler(torch.tensor([8.0])).item() == -0.5


def test_target_logits_by_hand_and_the_other_logits_are_s_cos():
    margin = frozen_margin(mean=10.0, std=4.0)
    cos = torch.tensor([[0.5, 0.2, -0.3],
                        [0.3, 0.8, 0.1],
                        [0.6, 0.1, 0.0],
                        [0.9, -0.2, 0.4]])
    labels = torch.tensor([0, 1, 2, -1])  # the last row's class lives on another rank
    norms = torch.tensor([6.0, 10.0, 12.0, 30.0])  # z = -1, 0, 0.5, 1
    out = margin(cos, labels, norms)
    expected = cos * S
    expected[0, 0] = expected_target(0.5, -1.0)
    expected[1, 1] = expected_target(0.8, 0.0)
    expected[2, 2] = expected_target(0.0, 0.5)
    torch.testing.assert_close(out, expected)


def test_z_minus_one_is_arcface_z_zero_is_cosface_z_one_is_minus_m_plus_2m():
    margin = frozen_margin(mean=10.0, std=4.0)
    cos = torch.tensor([[0.3], [0.3], [0.3]])
    out = margin(cos, torch.zeros(3, dtype=torch.long), torch.tensor([2.0, 10.0, 50.0]))  # z = -1, 0, 1
    arc = CombinedMarginLoss(S, 1.0, M, 0.0)(cos[:1], torch.zeros(1, dtype=torch.long))
    cosface = CombinedMarginLoss(S, 1.0, 0.0, M)(cos[:1], torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(out[0], arc[0])
    torch.testing.assert_close(out[1], cosface[0])
    assert out[2].item() == pytest.approx(S * (math.cos(math.acos(0.3) - M) - 2 * M), rel=1e-6)


def test_clip_edges_of_the_cosine_and_the_angle():
    margin = frozen_margin(mean=10.0, std=4.0)
    cos = torch.tensor([[1.0, -1.0],
                        [-1.0, 1.0]])
    out = margin(cos, torch.tensor([0, 0]), torch.tensor([50.0, 2.0]))  # z = 1, then -1
    edge = 1.0 - ADAFACE_EPS
    # row 0: theta = acos(1 - eps) - m < eps, clipped to eps; row 1: acos(-(1 - eps)) + m > pi - eps
    assert out[0, 0].item() == pytest.approx(S * (math.cos(ADAFACE_EPS) - 2 * M), rel=1e-6)
    assert out[1, 0].item() == pytest.approx(S * math.cos(math.pi - ADAFACE_EPS), rel=1e-6)
    assert out[0, 1].item() == pytest.approx(-S * edge) and out[1, 1].item() == pytest.approx(S * edge)


def test_gradient_is_the_true_derivative_and_none_reaches_the_norms():
    margin = frozen_margin(mean=10.0, std=4.0)
    cos = torch.tensor([[0.3, 0.5], [0.7, -0.2]], dtype=torch.float64, requires_grad=True)
    norms = torch.tensor([12.0, 6.0], requires_grad=True)
    margin(cos, torch.tensor([0, 1]), norms).sum().backward()
    z = torch.tensor([0.5, -1.0], dtype=torch.float64)
    target = torch.tensor([0.3, -0.2], dtype=torch.float64)
    theta = torch.acos(target) - M * z
    expected = torch.full_like(cos, S)
    expected[[0, 1], [0, 1]] = S * torch.sin(theta) / torch.sqrt(1 - target ** 2)  # d cos(acos x - mz) / dx
    torch.testing.assert_close(cos.grad, expected)
    assert norms.grad is None


# ---------------------------------------------------------------- the running statistics

def test_running_statistics_after_k_steps_and_updated_before_use():
    t_alpha = 0.1
    margin = AdaFaceMargin(S, M, 0.333, t_alpha)
    batches = [[10.0, 30.0, 26.0, 14.0], [1e-6, 150.0, 20.0], [18.0, 18.0, 19.0, 25.0, 40.0]]
    mean, std = 20.0, 100.0
    for batch in batches:
        clipped = [min(max(n, 1e-3), 100.0) for n in batch]
        mean = t_alpha * statistics.fmean(clipped) + (1 - t_alpha) * mean
        std = t_alpha * statistics.stdev(clipped) + (1 - t_alpha) * std  # unbiased
        norms = torch.tensor(batch)
        z = margin.scaler(norms)
        assert margin.norm_mean.item() == pytest.approx(mean, rel=1e-6)
        assert margin.norm_std.item() == pytest.approx(std, rel=1e-6)
        expected = [max(-1.0, min(1.0, 0.333 * (n - mean) / (std + ADAFACE_EPS))) for n in clipped]
        torch.testing.assert_close(z, torch.tensor(expected))  # this step's z uses this step's update
    assert margin.stats() == {"margin/norm_mean": margin.norm_mean, "margin/norm_std": margin.norm_std}


def test_a_non_finite_batch_leaves_the_statistics_as_they_were():
    margin = AdaFaceMargin()
    margin.scaler(torch.tensor([10.0, 30.0]))
    before = (margin.norm_mean.clone(), margin.norm_std.clone())
    margin.scaler(torch.tensor([10.0, float("nan")]))
    assert (margin.norm_mean, margin.norm_std) == before


def test_eval_mode_reads_the_statistics_without_moving_them():
    margin = AdaFaceMargin().eval()
    margin(torch.zeros(3, 2), torch.tensor([0, 1, -1]), torch.tensor([5.0, 50.0, 500.0]))
    assert (margin.norm_mean.item(), margin.norm_std.item()) == (20.0, 100.0)


def test_a_training_batch_of_one_is_refused_and_bad_parameters_name_their_key():
    with pytest.raises(ValueError, match="global batch of at least 2"):
        AdaFaceMargin()(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([5.0]))
    with pytest.raises(ValueError, match=r"adaface_m must be in \(0, 1\), got 1.5"):
        AdaFaceMargin(m=1.5)
    with pytest.raises(ValueError, match="adaface_t_alpha"):
        AdaFaceMargin(t_alpha=0.0)
    with pytest.raises(ValueError, match="interclass_filtering_threshold"):
        build_margin("adaface", (1.0, 0.5, 0.0), interclass_filtering_threshold=0.2)
    assert isinstance(build_margin("margin_list", (1.0, 0.0, 0.4)), CombinedMarginLoss)


# ---------------------------------------------------------------- heads

E, C, B = 6, 10, 4
LABELS = torch.tensor([0, 3, 3, 9, 1, 7, 4, 3])  # rank 0 of 2 owns classes 0-4, rank 1 owns 5-9
HEAD_KINDS = ("standalone", "adadistill", "arcdistill", "feature_kd")


def make_head(kind: str, classifier: torch.Tensor) -> torch.nn.Module:
    margin = AdaFaceMargin(S, M, 0.333, t_alpha=0.3)  # a large momentum makes every step count
    head = build_head(None if kind == "standalone" else kind,
                      HeadArgs(margin, E, C, teacher_classifier=classifier if kind == "arcdistill" else None))
    if kind != "arcdistill":
        rank, world = head.margin_softmax.rank, head.margin_softmax.world_size
        head.weight.data.copy_(reshard_weight(classifier, rank, world))
    return head


def test_every_margin_softmax_head_keeps_the_statistics_in_its_state_dict():
    classifier = torch.randn(C, E)
    for kind in HEAD_KINDS:
        assert "adaface" in head_spec(None if kind == "standalone" else kind).margins, kind
        head = make_head(kind, classifier)
        embeddings = torch.randn(2 * B, E) * 15.0
        loss, stats = head(embeddings, LABELS, teacher=torch.randn(2 * B, E))
        assert torch.isfinite(loss)
        state = head.state_dict()
        assert state[MEAN] == stats["margin/norm_mean"] != 20.0, kind
        assert state[STD] == stats["margin/norm_std"] != 100.0, kind
        fresh = make_head(kind, classifier)
        fresh.load_state_dict(state)
        assert fresh.margin_softmax.margin_loss.norm_mean == state[MEAN]


def _steps(head, rows, batches, teachers):
    results = []
    for embeddings, teacher in zip(batches, teachers):
        local = embeddings[rows].clone().requires_grad_()
        loss, stats = head(local, LABELS[rows], teacher=teacher[rows])
        loss.backward()
        results.append((loss.detach(), local.grad, stats["margin/norm_mean"], stats["margin/norm_std"],
                        head.weight.detach().clone()))
    return results


def _ranked_steps(info, classifier, batches, teachers):
    rows = slice(info.rank * B, (info.rank + 1) * B)
    out = {}
    for kind in HEAD_KINDS:
        head = make_head(kind, classifier)
        out[kind] = (head.class_start, head.num_local, _steps(head, rows, batches, teachers))
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_twice_the_batch_over_several_steps():
    """The norms come from the gathered batch: every rank's statistics equal the one-process ones."""
    classifier = torch.randn(C, E)
    batches = [torch.randn(2 * B, E) * scale for scale in (5.0, 20.0, 60.0)]
    teachers = [torch.randn(2 * B, E) for _ in batches]
    per_rank = run_in_processes(_ranked_steps, 2, classifier, batches, teachers)
    for kind in HEAD_KINDS:
        single = _steps(make_head(kind, classifier), slice(None), batches, teachers)
        for rank in range(2):
            start, count, steps = per_rank[rank][kind]
            for (loss, grad, mean, std, weight), (loss1, grad1, mean1, std1, weight1) in zip(steps, single):
                assert torch.equal(mean, mean1) and torch.equal(std, std1), kind
                torch.testing.assert_close(loss, loss1)
                torch.testing.assert_close(grad / 2, grad1[rank * B:(rank + 1) * B])  # x W, DDP averages
                torch.testing.assert_close(weight, weight1[start:start + count])


# ---------------------------------------------------------------- training

def _train(output: Path, *overrides: str) -> Path:
    assert train_main([TINY, "--set", f"output={output}", "progress_bar=false", "margin=adaface", *overrides]) == 0
    return output


def test_stop_and_resume_restores_the_running_statistics_bit_for_bit(tmp_path: Path) -> None:
    args = ("sample_rate=0.5", "save_every_steps=4", "adaface_t_alpha=0.2")
    straight = _train(tmp_path / "straight", *args, "max_steps=12")
    split = tmp_path / "split"
    _train(split, *args, "max_steps=6")  # stops after step 6; the set at step 4 is the resume point
    _train(split, *args, "max_steps=12", "resume=True")
    a, b = latest_states(straight, 1)[0], latest_states(split, 1)[0]
    assert_same_states(a, b)
    head = a["state_dict_softmax_fc"]
    assert set(head) == {"weight", MEAN, STD}
    assert head[MEAN] != 20.0


@pytest.mark.slow
def test_two_processes_hold_one_set_of_statistics_that_resumes_on_one_process(tmp_path: Path) -> None:
    """torchrun x2: both rank files carry the same statistics; the set re-shards onto one process."""
    out = tmp_path / "two"
    cmd = [TORCHRUN, "--nproc_per_node=2", "-m", "insightface_adadistill", "train", TINY, "--set", f"output={out}",
           "progress_bar=false", "margin=adaface", "max_steps=4", "batch_size=8", "save_every_steps=4",
           "num_classes=15"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (state["state_dict_softmax_fc"] for state in latest_states(out, 2))
    for name in (MEAN, STD):
        assert torch.equal(rank0[name], rank1[name]) and rank0[name].dim() == 0
    assert rank0[MEAN] != 20.0
    _train(out, "max_steps=6", "batch_size=8", "num_classes=15", "save_every_steps=6", "resume=True",
           "resume_allow_changes=True")  # world size 2 -> 1
    resumed = latest_states(out, 1)[0]["state_dict_softmax_fc"]
    assert resumed["weight"].shape[0] == 15 and resumed[MEAN] != rank0[MEAN]


# ---------------------------------------------------------------- config

def test_the_config_picks_the_margin_and_refuses_what_it_would_ignore():
    cfg = load_config(TINY, ["margin=adaface", "adaface_m=0.5", "adaface_h=0.2", "adaface_t_alpha=0.05"])
    margin = build_margin(cfg.margin, cfg.margin_list, cfg.margin_grad, cfg.interclass_filtering_threshold,
                          cfg.adaface_m, cfg.adaface_h, cfg.adaface_t_alpha)
    assert (margin.s, margin.m, margin.h, margin.t_alpha) == (64.0, 0.5, 0.2, 0.05)
    assert load_config(TINY).margin == "margin_list"
    refused = {("adaface_m=0.5",): "adaface_m = 0.5 is read only with margin = 'adaface'",
               ("margin=adaface", "interclass_filtering_threshold=0.1"): "interclass_filtering_threshold = 0.1",
               ("margin=adaface", "adaface_h=-1"): r"adaface_h = -1.0 must be >= 0",
               ("margin=adaface", "adaface_m=1"): r"adaface_m = 1.0 must be in \(0, 1\)",
               ("margin=arcface",): "margin = 'arcface' must be one of 'margin_list', 'adaface'"}
    for overrides, message in refused.items():
        with pytest.raises(ConfigError, match=message) as excinfo:
            load_config(TINY, list(overrides))
        assert len(excinfo.value.problems) == 1
