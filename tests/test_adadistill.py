"""heads/adadistill.py: the centre update by hand, duplicates, bit-identity with the full-size formula, the
head, and 2 ranks x B == 1 rank x 2B."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_utils import run_in_processes
from insightface_adadistill.heads import (HEADS, AdaDistillHead, CombinedMarginLoss, reshard_weight,
                                          update_class_centres)
from insightface_adadistill.heads.adadistill import ROW_STATS
from insightface_adadistill.heads.partial_fc import ShardedMarginSoftmax

E, C, B = 6, 10, 4
LABELS = torch.tensor([0, 3, 3, 9, 1, 7, 4, 3])  # 2B labels with duplicates (class 3 three times)


def updated_copy(centres, teacher, student, labels, alpha="weighted"):
    """`update_class_centres` on a copy of `centres`: (new centres, stats); `centres` stays as it was."""
    new = centres.clone()
    return new, update_class_centres(new, teacher, student, labels, alpha)


def unit(angle_deg: float) -> torch.Tensor:
    angle = math.radians(angle_deg)
    return torch.tensor([[math.cos(angle), math.sin(angle)]])


# ---------------------------------------------------------------- update_class_centres by hand

def test_plain_weighted_and_fixed_alpha_by_hand():
    centres = torch.tensor([[0.0, 2.0]])  # raw, not unit: |w| = 2
    teacher, student = unit(60) * 3.0, unit(0)  # any norm: both are normalised first
    labels = torch.tensor([0])
    t = unit(60)
    cos_st, lam = 0.5, math.sin(math.radians(60))  # cos(s, t) and cos(w, t)

    plain, stats = updated_copy(centres, teacher, student, labels, "plain")
    torch.testing.assert_close(plain, 0.5 * centres + 0.5 * t)
    weighted, stats = updated_copy(centres, teacher, student, labels, "weighted")
    alpha_w = cos_st * lam
    torch.testing.assert_close(weighted, alpha_w * centres + (1 - alpha_w) * t)
    fixed, _ = updated_copy(centres, teacher, student, labels, 0.9)
    torch.testing.assert_close(fixed, 0.9 * centres + 0.1 * t)

    expected = {"alpha": cos_st, "alpha_weighted": alpha_w, "centre_teacher_cos": lam,
                "student_teacher_cos": cos_st, "momentum": alpha_w}
    for name, value in expected.items():
        assert stats[name].item() == pytest.approx(value, rel=1e-6), name
    assert stats["class_count"].tolist() == [1.0]


def test_clamps():
    centres = torch.tensor([[0.0, -1.0]])  # cos(w, t) < 0 -> lambda = 1e-6
    teacher, student = unit(60), unit(180)  # cos(s, t) = -0.5 -> alpha = 1e-6
    _, stats = updated_copy(centres, teacher, student, torch.tensor([0]), "weighted")
    assert stats["student_teacher_cos"].item() == pytest.approx(-0.5)
    assert stats["alpha"].item() == pytest.approx(1e-6)
    assert stats["centre_teacher_cos"].item() == pytest.approx(1e-6)
    assert stats["alpha_weighted"].item() == pytest.approx(1e-6)


def test_first_visit_moves_the_centre_onto_the_teacher_embedding():
    centres = torch.normal(0.0, 0.01, (1, 512))
    teacher, student = torch.randn(1, 512), torch.randn(1, 512)
    new, _ = updated_copy(centres, teacher, student, torch.tensor([0]), "weighted")
    assert F.cosine_similarity(new, teacher).item() > 0.99
    assert new.norm().item() == pytest.approx(1.0, abs=0.05)


def test_unique_labels_equal_the_formula_exactly():
    centres, teacher, student = torch.randn(C, E), torch.randn(5, E), torch.randn(5, E)
    labels = torch.tensor([2, 7, -1, 0, 5])
    new, stats = updated_copy(centres, teacher, student, labels, "weighted")
    expected = centres.clone()
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        t, s = F.normalize(teacher[i], dim=0), F.normalize(student[i], dim=0)
        lam = torch.dot(F.normalize(centres[y], dim=0), t).clamp(1e-6, 1)
        alpha = (torch.dot(s, t).clamp(-1, 1) * lam).clamp(1e-6, 1)
        expected[y] = alpha * centres[y] + (1 - alpha) * t
    torch.testing.assert_close(new, expected, rtol=0, atol=1e-6)
    assert torch.equal(new[[1, 3, 4, 6, 8, 9]], centres[[1, 3, 4, 6, 8, 9]])  # untouched bit for bit
    assert all(stats[name][2] == 0 for name in ("alpha", "alpha_weighted", "momentum"))  # row owned elsewhere


def test_duplicates_take_the_mean_of_updates_from_the_old_centre():
    centres, teacher, student = torch.randn(C, E), torch.randn(6, E), torch.randn(6, E)
    labels = torch.tensor([4, 1, 4, 4, 1, 8])
    new, stats = updated_copy(centres, teacher, student, labels, "plain")
    alone = [updated_copy(centres, teacher[i:i + 1], student[i:i + 1], labels[i:i + 1], "plain")[0]
             for i in range(6)]  # each sample applied to the OLD centres on its own
    for y, rows in ((4, [0, 2, 3]), (1, [1, 4]), (8, [5])):
        torch.testing.assert_close(new[y], torch.stack([alone[i][y] for i in rows]).mean(0))
    assert stats["class_count"].tolist() == [3.0, 2.0, 3.0, 3.0, 2.0, 1.0]  # per sample
    for _ in range(3):  # deterministic, bit for bit
        assert torch.equal(updated_copy(centres, teacher, student, labels, "plain")[0], new)


def test_update_has_no_gradient():
    student = torch.randn(2, E, requires_grad=True)
    new, stats = updated_copy(torch.randn(C, E), torch.randn(2, E), student, torch.tensor([1, 2]))
    assert not new.requires_grad and not stats["alpha"].requires_grad


# ---------------------------------------------------------------- bit-identity with the full-size formula

def full_size_update(centres, teacher_emb, student_emb, labels, alpha):
    """FROZEN copy of the update before it became O(N E) (commit 71947da): sums into a (C_local + 1, E)
    buffer and rebuilds every centre. The in-place update must equal it bit for bit on CPU."""
    momentum_of = {"plain": "alpha", "weighted": "alpha_weighted"}
    num_local = centres.shape[0]
    owned = (labels >= 0).to(centres.dtype)
    old = centres[labels.clamp(min=0)]
    teacher, student = F.normalize(teacher_emb.float()), F.normalize(student_emb.float())
    student_teacher_cos = (student * teacher).sum(dim=1).clamp(-1.0, 1.0)
    centre_teacher_cos = (F.normalize(old) * teacher).sum(dim=1).clamp(1e-6, 1.0)
    stats = {"alpha": student_teacher_cos.clamp(1e-6, 1.0),
             "alpha_weighted": (student_teacher_cos * centre_teacher_cos).clamp(1e-6, 1.0),
             "centre_teacher_cos": centre_teacher_cos, "student_teacher_cos": student_teacher_cos}
    stats["momentum"] = stats[momentum_of[alpha]] if isinstance(alpha, str) else torch.full_like(owned, alpha)
    updated = stats["momentum"].unsqueeze(1) * old + (1.0 - stats["momentum"]).unsqueeze(1) * teacher
    slot = torch.where(labels >= 0, labels, num_local)
    sums = centres.new_zeros(num_local + 1, centres.shape[1]).index_put_((slot,), updated, accumulate=True)
    count = centres.new_zeros(num_local + 1).index_put_((slot,), torch.ones_like(owned), accumulate=True)
    mean = sums[:num_local] / count[:num_local].clamp(min=1.0).unsqueeze(1)
    new_centres = torch.where(count[:num_local].unsqueeze(1) > 0, mean, centres)
    stats = {name: value * owned for name, value in stats.items()}
    stats["class_count"] = count[:num_local]
    return new_centres, stats


def random_case(generator: torch.Generator, case: int):
    """Centres, teacher, student and labels of a random size; labels with heavy duplicates and -1."""
    num_local = int(torch.randint(1, 40, (), generator=generator))
    n = int(torch.randint(1, 64, (), generator=generator))
    e = (3, 16, 512)[case % 3]
    labels = torch.randint(-1, num_local, (n,), generator=generator)
    if case % 5 == 0:
        labels = torch.full((n,), -1)  # no class of this rank in the batch
    elif case % 5 == 1:
        labels = torch.randint(0, min(num_local, 3), (n,), generator=generator)  # few classes, many repeats
    scale = float(torch.rand((), generator=generator)) * 3 + 0.01
    return (torch.randn(num_local, e, generator=generator) * 0.01, torch.randn(n, e, generator=generator) * scale,
            torch.randn(n, e, generator=generator), labels)


@pytest.mark.parametrize("alpha", ["weighted", "plain", 0.3, 0.9])
def test_in_place_update_equals_the_full_size_formula_bit_for_bit(alpha):
    generator = torch.Generator().manual_seed(20)
    for case in range(60):
        centres, teacher, student, labels = random_case(generator, case)
        ref_centres, ref_stats = full_size_update(centres, teacher, student, labels, alpha)
        new, stats = updated_copy(centres, teacher, student, labels, alpha)
        assert torch.equal(new, ref_centres), case
        assert new.dtype == torch.float32 and stats.keys() == ref_stats.keys()
        for name in ROW_STATS:
            assert torch.equal(stats[name], ref_stats[name]), (case, name)
        owned = (labels >= 0).float()
        assert torch.equal(stats["class_count"], ref_stats["class_count"][labels.clamp(min=0)] * owned), case


@pytest.mark.parametrize("alpha", ["weighted", "plain", 0.5])
def test_head_steps_equal_the_full_size_formula_bit_for_bit(alpha):
    generator = torch.Generator().manual_seed(21)
    centres = torch.randn(C, E, generator=generator) * 0.01
    head, visited = make_head(centres=centres, alpha=alpha), torch.zeros(C, dtype=torch.bool)
    for _ in range(4):
        labels = torch.randint(0, C // 2, (2 * B,), generator=generator)  # duplicates, half the classes
        student, teacher = torch.randn(2 * B, E, generator=generator), torch.randn(2 * B, E, generator=generator)
        head(student, labels, teacher=teacher)
        centres, stats = full_size_update(centres, teacher, student, labels, alpha)
        visited |= stats["class_count"] > 0
        assert torch.equal(head.weight, centres) and torch.equal(head.visited, visited)


# ---------------------------------------------------------------- the head

def margin() -> CombinedMarginLoss:
    return CombinedMarginLoss(8.0, 1.0, 0.5, 0.0)


def make_head(sample_rate: float = 1.0, centres: torch.Tensor | None = None, alpha="weighted") -> AdaDistillHead:
    head = AdaDistillHead(margin(), E, C, sample_rate, alpha)
    if centres is not None:
        ms = head.margin_softmax
        head.weight.copy_(reshard_weight(centres, ms.rank, ms.world_size))
    return head


def test_state_dict_and_no_parameters():
    head = make_head()
    assert list(head.state_dict()) == ["weight", "visited"]
    assert list(head.parameters()) == [] and HEADS.spec("adadistill").teacher_embeddings
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize("alpha", ["weighted", "plain", 0.5])
def test_loss_uses_the_updated_centres_and_gives_them_no_gradient(alpha):
    centres = torch.randn(C, E)
    head = make_head(centres=centres, alpha=alpha)
    student, teacher = torch.randn(2 * B, E, requires_grad=True), torch.randn(2 * B, E)
    loss = head(student, LABELS, teacher=teacher).loss
    loss.backward()
    updated, _ = updated_copy(centres, teacher, student.detach(), LABELS, alpha)
    torch.testing.assert_close(head.weight, updated)
    core = ShardedMarginSoftmax(margin(), C)
    student_ref = student.detach().clone().requires_grad_()
    ref = core(student_ref, LABELS, updated).loss
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(student.grad, student_ref.grad)
    assert head.weight.grad is None and not head.weight.requires_grad
    assert head.visited.tolist() == [c in LABELS.tolist() for c in range(C)]


def test_stats_are_detached_device_tensors():
    head = make_head()
    _, stats = head(torch.randn(2 * B, E), LABELS, teacher=torch.randn(2 * B, E))
    for name in ("distill/alpha", "distill/alpha_weighted", "distill/centre_teacher_cos",
                 "distill/student_teacher_cos", "distill/visited_fraction", "distill/centre_norm",
                 "train/target_prob"):
        assert stats[name].dim() == 0 and not stats[name].requires_grad, name
    assert len(stats) == 8 and stats["distill/alpha_per_sample"].shape == (2 * B,)
    assert stats["distill/visited_fraction"].item() == pytest.approx(6 / C)
    torch.testing.assert_close(stats["distill/alpha_per_sample"].mean(), stats["distill/alpha_weighted"])


def test_centre_norm_follows_every_write_to_the_centres():
    """The per-class norms are cached and only the batch's rows recomputed; the logged mean must still
    be exactly the mean over all centres, also after a write the head did not make."""
    head = make_head(sample_rate=0.5)
    gen = torch.Generator().manual_seed(0)

    def step(labels: torch.Tensor) -> torch.Tensor:
        n = labels.numel()
        stats = head(torch.randn(n, E, generator=gen), labels, teacher=torch.randn(n, E, generator=gen)).stats
        return stats["distill/centre_norm"]

    writes = [lambda: None,
              lambda: head.weight.mul_(2.0),  # user code writing in place
              lambda: head.load_state_dict({"weight": torch.randn(C, E, generator=gen),  # a resume
                                            "visited": head.visited.clone()}),
              lambda: setattr(head, "weight", torch.randn(C, E, generator=gen)),  # a new tensor
              lambda: head.to(torch.float64).to(torch.float32)]  # `.to()` replaces the buffer
    for write in writes:
        for _ in range(3):
            labels = torch.randint(-1, C, (2 * B,), generator=gen)
            assert torch.equal(step(labels), head.weight.norm(dim=1).sum() / C)
        write()
        assert torch.equal(step(LABELS), head.weight.norm(dim=1).sum() / C)


def test_eval_mode_leaves_the_centres_alone():
    head = make_head().eval()
    before = head.weight.clone()
    _, stats = head(torch.randn(2, E), torch.tensor([1, 2]), teacher=torch.randn(2, E))
    assert torch.equal(head.weight, before) and not head.visited.any()
    assert set(stats) == {"train/target_prob"}


def test_argument_errors():
    head = make_head()
    student, teacher, labels = torch.randn(2, E), torch.randn(2, E), torch.tensor([1, 2])
    with pytest.raises(TypeError, match=r"head\(embeddings, labels, teacher=teacher\)"):
        head(student, labels)
    with pytest.raises(TypeError, match="floating point, got torch.int64"):
        head(student, labels, teacher=labels)
    with pytest.raises(TypeError, match="positional"):
        head(student, labels, teacher)  # the teacher is keyword-only: no order to get wrong
    with pytest.raises(ValueError, match="same shape"):
        head(student, labels, teacher=torch.randn(2, E + 1))
    for bad in ("mean", 1.5, -0.1, True):
        with pytest.raises(ValueError, match="distill_alpha"):
            make_head(alpha=bad)


# ---------------------------------------------------------------- 2 ranks x B == 1 rank x 2B

STEPS = 2


def _run_steps(head, students, teachers, rows):
    out = []
    for step in range(STEPS):
        local = students[step][rows].clone().requires_grad_()
        loss, stats = head(local, LABELS[rows], teacher=teachers[step][rows])
        loss.backward()
        out.append((loss.detach(), local.grad, head.weight.clone(),
                    {k: v.clone() for k, v in stats.items()}))
    return out


def _sharded_steps(info, centres, students, teachers):
    rows = slice(info.rank * B, (info.rank + 1) * B)
    results = {}
    for sample_rate in (1.0, 0.0):
        head = make_head(sample_rate, centres)
        results[sample_rate] = (_run_steps(head, students, teachers, rows), head.class_start, head.num_local,
                                head.visited.clone())
    return results


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_twice_the_batch():
    centres = torch.randn(C, E)
    students = [torch.randn(2 * B, E) for _ in range(STEPS)]
    teachers = [torch.randn(2 * B, E) for _ in range(STEPS)]
    per_rank = run_in_processes(_sharded_steps, 2, centres, students, teachers)
    for sample_rate in (1.0, 0.0):
        head = make_head(sample_rate, centres)
        reference = _run_steps(head, students, teachers, slice(0, 2 * B))
        for rank in range(2):
            steps, start, count, visited = per_rank[rank][sample_rate]
            assert torch.equal(visited, head.visited[start:start + count])
            for (loss, grad, weight, stats), (ref_loss, ref_grad, ref_weight, ref_stats) in zip(steps, reference):
                torch.testing.assert_close(loss, ref_loss)
                # x W (the host's convention), which DDP's average over the 2 ranks undoes
                torch.testing.assert_close(grad / 2, ref_grad[rank * B:(rank + 1) * B])
                torch.testing.assert_close(weight, ref_weight[start:start + count])
                assert stats.keys() == ref_stats.keys()
                for name in stats:
                    torch.testing.assert_close(stats[name], ref_stats[name], msg=name)
