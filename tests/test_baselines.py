"""heads/baselines.py and build_head: the frozen teacher classifier, feature KD, the head registry."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_utils import run_in_processes
from insightface_adadistill.heads import (HEADS, AdaDistillHead, CombinedMarginLoss, FeatureKDHead,
                                          FixedClassifierHead, HeadArgs, HeadOutput, HeadSpec, PartialFC, build_head,
                                          feature_distance)
from insightface_adadistill.heads import partial_fc

E, C, B = 6, 10, 4
LABELS = torch.tensor([0, 3, 3, 9, 1, 7, 4, 3])


def margin() -> CombinedMarginLoss:
    return CombinedMarginLoss(8.0, 1.0, 0.0, 0.35)  # CosDistill


def dense_loss(embeddings, weight, labels):
    cos = F.normalize(embeddings) @ F.normalize(weight).t()
    return F.cross_entropy(margin()(cos, labels), labels)


# ---------------------------------------------------------------- FixedClassifierHead

def test_fixed_classifier_is_the_teacher_classifier_frozen():
    teacher_classifier = torch.randn(C, E)
    head = FixedClassifierHead(margin(), E, C, teacher_classifier)
    assert list(head.parameters()) == [] and list(head.state_dict()) == ["weight"]
    assert torch.equal(head.weight, teacher_classifier) and not HEADS.spec("arcdistill").teacher_embeddings
    student = torch.randn(2 * B, E, requires_grad=True)
    loss = head(student, LABELS).loss
    loss.backward()
    reference = student.detach().clone().requires_grad_()
    dense_loss(reference, teacher_classifier, LABELS).backward()
    torch.testing.assert_close(loss, dense_loss(reference.detach(), teacher_classifier, LABELS))
    torch.testing.assert_close(student.grad, reference.grad)
    assert head.weight.grad is None


def test_fixed_classifier_takes_this_ranks_rows(monkeypatch):
    monkeypatch.setattr(partial_fc, "get_rank", lambda: 1)
    monkeypatch.setattr(partial_fc, "get_world_size", lambda: 3)
    teacher_classifier = torch.arange(float(C * E)).view(C, E)
    head = FixedClassifierHead(margin(), E, C, teacher_classifier)
    assert (head.class_start, head.num_local) == (4, 3)  # shards 4, 3, 3
    assert torch.equal(head.weight, teacher_classifier[4:7])


def test_fixed_classifier_shape_errors():
    with pytest.raises(ValueError, match=r"looks transposed.*kernel.t\(\)"):
        FixedClassifierHead(margin(), E, C, torch.randn(E, C))
    with pytest.raises(ValueError, match=r"expected \(num_classes, embedding_size\) = \(10, 6\)"):
        FixedClassifierHead(margin(), E, C, torch.randn(C + 1, E))


# ---------------------------------------------------------------- FeatureKDHead

def test_feature_distance_by_hand():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # unit after normalising
    teacher = torch.tensor([[1.0, 1.0], [0.0, 3.0]])  # 45 degrees off, then identical
    expected = ((2 - 2 * math.cos(math.pi / 4)) + 0.0) / 2  # |s - t|^2 summed over dims, mean over batch
    assert feature_distance(student, teacher, world_size=1).item() == pytest.approx(expected)


def test_feature_kd_loss_is_margin_loss_plus_weighted_distance():
    head = FeatureKDHead(margin(), E, C, kd_weight=2.5)
    student, teacher = torch.randn(2 * B, E, requires_grad=True), torch.randn(2 * B, E)
    loss, stats = head(student, LABELS, teacher=teacher)
    loss.backward()
    reference = student.detach().clone().requires_grad_()
    distance = (F.normalize(reference) - F.normalize(teacher)).pow(2).sum(1).mean()
    expected = dense_loss(reference, head.weight.detach(), LABELS) + 2.5 * distance
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(student.grad, reference.grad)
    torch.testing.assert_close(stats["distill/feature_distance"], distance.detach())
    assert set(stats) == {"train/target_prob", "distill/feature_distance"}
    assert HEADS.spec("feature_kd").teacher_embeddings and list(head.state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="feature_kd_weight"):
        FeatureKDHead(margin(), E, C, kd_weight=-1.0)


def _sharded_baselines(info, student, teacher, weight, teacher_classifier):
    rows = slice(info.rank * B, (info.rank + 1) * B)
    kd = FeatureKDHead(margin(), E, C, kd_weight=2.0)
    kd.weight.data.copy_(partial_fc.reshard_weight(weight, info.rank, info.world_size))
    local = student[rows].clone().requires_grad_()
    loss = kd(local, LABELS[rows], teacher=teacher[rows]).loss
    loss.backward()
    fixed = FixedClassifierHead(margin(), E, C, teacher_classifier)
    return loss.detach(), local.grad, fixed.weight, fixed.class_start


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_twice_the_batch():
    student, teacher, weight, teacher_classifier = (torch.randn(2 * B, E), torch.randn(2 * B, E),
                                                    torch.randn(C, E), torch.randn(C, E))
    per_rank = run_in_processes(_sharded_baselines, 2, student, teacher, weight, teacher_classifier)
    kd = FeatureKDHead(margin(), E, C, kd_weight=2.0)
    kd.weight.data.copy_(weight)
    full = student.clone().requires_grad_()
    loss = kd(full, LABELS, teacher=teacher).loss
    loss.backward()
    for rank, (rank_loss, grad, fixed_weight, start) in enumerate(per_rank):
        torch.testing.assert_close(rank_loss, loss.detach())  # the global value on every rank
        # this rank's share, times W: the host's convention, which DDP's average over ranks undoes
        torch.testing.assert_close(grad / 2, full.grad[rank * B:(rank + 1) * B])
        assert torch.equal(fixed_weight, teacher_classifier[start:start + 5])


# ---------------------------------------------------------------- build_head

@pytest.mark.parametrize("distill, cls", [(None, PartialFC), ("standalone", PartialFC),
                                          ("adadistill", AdaDistillHead), ("feature_kd", FeatureKDHead)])
def test_build_head(distill, cls):
    head = build_head(distill, HeadArgs(margin(), E, C, sample_rate=0.5, alpha="plain", feature_kd_weight=0.5))
    assert type(head) is cls and head.margin_softmax.sample_rate == 0.5
    assert HEADS.names() == ["adadistill", "arcdistill", "feature_kd", "standalone"]


def test_build_head_arcdistill_and_errors():
    teacher_classifier = torch.randn(C, E)
    head = build_head("arcdistill", HeadArgs(margin(), E, C, teacher_classifier=teacher_classifier))
    assert isinstance(head, FixedClassifierHead) and torch.equal(head.weight, teacher_classifier)
    with pytest.raises(ValueError, match="set teacher_classifier"):
        build_head("arcdistill", HeadArgs(margin(), E, C))
    with pytest.raises(ValueError, match="only used by distill='arcdistill'"):
        build_head("adadistill", HeadArgs(margin(), E, C, teacher_classifier=teacher_classifier))
    with pytest.raises(ValueError, match="Did you mean 'adadistill'"):
        build_head("adadistil", HeadArgs(margin(), E, C))
    assert build_head("adadistill", HeadArgs(margin(), E, C, alpha=0.7)).alpha == 0.7


# ---------------------------------------------------------------- the head contract

@pytest.mark.parametrize("distill", HEADS.names())
def test_every_head_takes_one_call_and_tags_its_own_stats(distill):
    spec = HEADS.spec(distill)
    teacher_classifier = torch.randn(C, E) if spec.teacher_classifier else None
    head = build_head(distill, HeadArgs(margin(), E, C, teacher_classifier=teacher_classifier))
    student, teacher = torch.randn(2 * B, E, requires_grad=True), torch.randn(2 * B, E)
    out = head(student, LABELS, teacher=teacher)
    assert isinstance(out, HeadOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(key.startswith(("train/", "distill/")) for key in out.stats), out.stats.keys()
    assert any(key.startswith("distill/") for key in out.stats) == (distill in ("adadistill", "feature_kd"))
    assert not any(value.requires_grad for value in out.stats.values())


# ---------------------------------------------------------------- the declarations

@pytest.mark.parametrize("distill", HEADS.names())
def test_every_head_does_what_its_spec_declares(distill):
    """The spec is what the trainer, the config check, the demo and host-train read: it must be true."""
    spec = HEADS.spec(distill)
    assert isinstance(spec, HeadSpec) and spec.margins
    teacher_classifier = torch.randn(C, E) if spec.teacher_classifier else None
    head = build_head(distill, HeadArgs(margin(), E, C, teacher_classifier=teacher_classifier))
    assert any(p.requires_grad for p in head.parameters()) == spec.learned_weights
    student = torch.randn(2 * B, E)
    if spec.teacher_embeddings:
        with pytest.raises(TypeError, match="needs the teacher embeddings"):
            head(student, LABELS)
    else:
        assert torch.isfinite(head(student, LABELS).loss)  # no teacher needed
