"""heads/partial_fc.py: dense equivalence, sampling, argument checks, and 2 ranks x B == 1 rank x 2B."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_utils import run_in_processes
from insightface_adadistill.heads import (HEADS, CombinedMarginLoss, PartialFC, distributed_cross_entropy,
                                          reshard_weight)
from insightface_adadistill.heads.partial_fc import NegativeSampler

E, C, B = 6, 10, 4
# 2B labels with duplicates; rank 0 of 2 owns classes 0-4, rank 1 owns 5-9
LABELS = torch.tensor([0, 3, 3, 9, 1, 7, 4, 3])
LABELS_ONE_SHARD = torch.tensor([0, 3, 3, 2, 1, 4, 4, 3])  # with sample_rate 0, rank 1 has no column


def margin(exact: bool = False) -> CombinedMarginLoss:
    return CombinedMarginLoss(8.0, 1.0, 0.5, 0.0, exact_grad=exact)  # small s keeps the loss O(1)


def dense_loss(embeddings, weight, labels, margin_loss):
    cos = F.normalize(embeddings) @ F.normalize(weight).t()
    return F.cross_entropy(margin_loss(cos.clamp(-1, 1), labels), labels)


def make_head(sample_rate: float = 1.0, weight: torch.Tensor | None = None, exact: bool = False) -> PartialFC:
    head = PartialFC(margin(exact), E, C, sample_rate)
    if weight is not None:
        head.load_state_dict({"weight": reshard_weight(weight, head.margin_softmax.rank,
                                                       head.margin_softmax.world_size)})
    return head


def test_state_dict_is_only_weight():
    head = PartialFC(margin(), 512, 1000, sample_rate=0.5)
    assert list(head.state_dict()) == ["weight"]
    assert head.weight.shape == (1000, 512) and head.weight.dtype == torch.float32
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert HEADS.spec("standalone").teacher_embeddings is False


@pytest.mark.parametrize("exact", [False, True])
def test_equals_dense_softmax_cross_entropy(exact):
    head = make_head(exact=exact)
    embeddings = torch.randn(2 * B, E, requires_grad=True)
    loss, stats = head(embeddings, LABELS)
    loss.backward()
    emb_ref = embeddings.detach().clone().requires_grad_()
    weight_ref = head.weight.detach().clone().requires_grad_()
    ref = dense_loss(emb_ref, weight_ref, LABELS, margin(exact))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(embeddings.grad, emb_ref.grad)
    torch.testing.assert_close(head.weight.grad, weight_ref.grad)
    assert set(stats) == {"train/target_prob"} and stats["train/target_prob"].dim() == 0


def test_distributed_cross_entropy_matches_torch_and_clamps():
    logits = torch.randn(5, 7, requires_grad=True)
    labels = torch.tensor([0, 6, 2, 2, 4])
    loss, p_target = distributed_cross_entropy(logits, labels)
    loss.backward()
    ref_logits = logits.detach().clone().requires_grad_()
    F.cross_entropy(ref_logits, labels).backward()
    torch.testing.assert_close(loss, F.cross_entropy(ref_logits, labels))
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    torch.testing.assert_close(p_target, F.softmax(ref_logits, 1)[torch.arange(5), labels].detach())
    hopeless = torch.tensor([[0.0, 500.0]])  # p_target = e^-500 underflows; the host clamps at 1e-30
    assert distributed_cross_entropy(hopeless, torch.tensor([0]))[0].item() == pytest.approx(-math.log(1e-30))


def test_autocast_does_not_lower_logit_precision():
    head = make_head()
    embeddings = torch.randn(2 * B, E)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(embeddings, LABELS).loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, head(embeddings, LABELS).loss)


# ---------------------------------------------------------------- sampling

def test_sampler_keeps_every_positive_sorted_and_remaps():
    labels = torch.tensor([3, -1, 17, 3, 0, -1])
    index, remapped = NegativeSampler(seed=1).sample(labels, num_local=20, num_sample=8)
    assert index.numel() == 8 and torch.equal(index, index.sort().values)
    assert {0, 3, 17} <= set(index.tolist())
    assert torch.equal(index[remapped[labels >= 0]], labels[labels >= 0])
    assert torch.equal(remapped[labels < 0], labels[labels < 0])


def test_sampler_positives_only_and_reproducible():
    labels = torch.tensor([5, 1, 5, -1])
    index, remapped = NegativeSampler(0).sample(labels, num_local=20, num_sample=0)  # sample_rate 0
    assert index.tolist() == [1, 5] and remapped.tolist() == [1, 0, 1, -1]
    first, second = NegativeSampler(7), NegativeSampler(7)
    assert torch.equal(first.sample(labels, 20, 6)[0], second.sample(labels, 20, 6)[0])
    saved = first.state()
    expected = first.sample(labels, 20, 6)[0]
    second.load_state(saved)
    assert torch.equal(second.sample(labels, 20, 6)[0], expected)


def test_sampled_head_equals_dense_loss_on_the_sampled_centres():
    head = make_head(sample_rate=0.5)
    state = head.sampler_state()
    embeddings = torch.randn(2 * B, E, requires_grad=True)
    loss = head(embeddings, LABELS).loss
    loss.backward()
    replay = NegativeSampler(0)
    replay.load_state(state)
    index, remapped = replay.sample(LABELS, C, 5)
    ref = dense_loss(embeddings.detach(), head.weight.detach()[index], remapped, margin())
    torch.testing.assert_close(loss, ref)
    unsampled = torch.ones(C, dtype=torch.bool)
    unsampled[index] = False
    assert torch.all(head.weight.grad[unsampled] == 0) and torch.any(head.weight.grad[index] != 0)
    assert list(head.state_dict()) == ["weight"]


# ---------------------------------------------------------------- validation and resharding

def test_label_errors_are_clear():
    """The call's metadata is checked here; the label range is the data side's, checked once before
    training (tests/test_datasets.py: test_num_classes_mismatch_names_count_and_fix, test_bad_labels_*)."""
    head = make_head()
    embeddings = torch.randn(2, E)
    with pytest.raises(TypeError, match="int64"):
        head(embeddings, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        head(torch.randn(2, E + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 embeddings but 3 labels"):
        head(embeddings, torch.tensor([0, 1, 2]))
    assert torch.isfinite(head(embeddings, torch.tensor([[1], [2]])).loss)  # (B, 1) as the host


def test_constructor_errors():
    with pytest.raises(TypeError, match="callable"):
        PartialFC("arcface", E, C)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(margin(), E, C, sample_rate=1.5)


def test_reshard_weight_round_trip():
    full = torch.arange(10.0 * 2).view(10, 2)
    shards = [reshard_weight(full, rank, 3) for rank in range(3)]
    assert [s.shape[0] for s in shards] == [4, 3, 3]
    assert torch.equal(torch.cat(shards), full)


# ---------------------------------------------------------------- 2 ranks x B == 1 rank x 2B

CASES = [(1.0, LABELS), (0.0, LABELS), (0.0, LABELS_ONE_SHARD)]


def _sharded_steps(info, weight, embeddings, cases):
    results = []
    for sample_rate, labels in cases:
        head = make_head(sample_rate, weight)
        rows = slice(info.rank * B, (info.rank + 1) * B)
        local = embeddings[rows].clone().requires_grad_()
        loss = head(local, labels[rows]).loss
        loss.backward()
        results.append((loss.detach(), local.grad, head.weight.grad, head.class_start, head.num_local))
    return results


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_twice_the_batch():
    weight, embeddings = torch.randn(C, E), torch.randn(2 * B, E)
    per_rank = run_in_processes(_sharded_steps, 2, weight, embeddings, CASES)
    for case, (sample_rate, labels) in enumerate(CASES):
        head = make_head(sample_rate, weight)
        full = embeddings.clone().requires_grad_()
        loss = head(full, labels).loss
        loss.backward()
        for rank in range(2):
            rank_loss, emb_grad, weight_grad, start, count = per_rank[rank][case]
            torch.testing.assert_close(rank_loss, loss.detach())
            # x W (the host's convention), which DDP's average over the 2 ranks undoes
            torch.testing.assert_close(emb_grad / 2, full.grad[rank * B:(rank + 1) * B])
            torch.testing.assert_close(weight_grad, head.weight.grad[start:start + count])
