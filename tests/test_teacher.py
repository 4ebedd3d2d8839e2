"""The teacher: strict loading with errors in config terms, the frozen wrapper, and classifier files.

The weight file formats themselves are tested in test_loading.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.teacher import (
    FrozenTeacher,
    build_teacher,
    check_embedding_sizes,
    load_teacher_classifier,
    shard_sizes,
    teacher_forward,
)

E = 16
IMAGES = torch.randn(2, 3, 112, 112)


@pytest.fixture
def source():
    """A trained-looking tiny teacher: BN running stats moved away from their defaults."""
    model = get_model("tiny_resnet", num_features=E)
    with torch.no_grad():
        model(torch.randn(8, 3, 112, 112))  # train-mode forward updates the running statistics
    return model.eval()


def _assert_same_weights(state, model):
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_build_teacher_reproduces_source(tmp_path, source):
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    teacher = build_teacher("tiny_resnet", str(path), E, "cpu")
    assert isinstance(teacher, FrozenTeacher)
    out = teacher(IMAGES)
    assert out.dtype == torch.float32 and torch.equal(out, source(IMAGES))
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.backbone.features.weight.requires_grad


def test_half_precision_file_gives_fp32_teacher(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.half().state_dict(), path)
    teacher = build_teacher("tiny_resnet", path, E, "cpu")
    assert all(p.dtype == torch.float32 for p in teacher.parameters())


def test_train_cannot_flip_teacher(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    teacher = build_teacher("tiny_resnet", path, E, "cpu")
    parent = nn.ModuleDict({"student": get_model("tiny_mfn", num_features=E), "teacher": teacher})
    parent.train()
    assert parent["student"].training
    assert not any(m.training for m in teacher.modules())
    teacher.train(True)
    assert not teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = torch.randn(4, 3, 112, 112, requires_grad=True)
    out = teacher(images)
    assert out.grad_fn is None and not out.requires_grad
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats untouched


def test_embeddings_usable_in_student_loss(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    teacher = build_teacher("tiny_resnet", path, E, "cpu")
    student = get_model("tiny_mfn", num_features=E)
    loss = nn.functional.mse_loss(student(IMAGES), teacher(IMAGES))
    loss.backward()  # teacher output is a plain tensor, not an inference tensor
    assert student.conv1.conv.weight.grad is not None


def test_precision_and_channels_last(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    reference = source(IMAGES)
    teacher = build_teacher("tiny_resnet", path, E, "cpu", dtype="bf16", channels_last=True)
    assert teacher.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = teacher(IMAGES)
    assert out.dtype == torch.float32
    assert (nn.functional.cosine_similarity(out, reference) > 0.97).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the student's mixed-precision region
        exact = teacher_forward(source, IMAGES, "fp32")
    assert torch.equal(exact, reference)
    with pytest.raises(ValueError, match="teacher_dtype 'int8'"):
        build_teacher("tiny_resnet", path, E, "cpu", dtype="int8")


def test_refuses_without_weights(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights is not set.*random teacher is never used"):
        build_teacher("r50", None, 512, "cpu")
    with pytest.raises(FileNotFoundError, match="nothing.pt not found.*'r50'"):
        build_teacher("r50", tmp_path / "nothing.pt", 512, "cpu")


def test_wrong_network_names_the_matching_one_in_config_terms(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(ValueError) as info:
        build_teacher("tiny_mfn", path, E, "cpu")
    message = str(info.value)
    assert message == (f"{path}: does not fit teacher_network = 'tiny_mfn' with embedding size {E}: this file "
                       f"looks like a tiny_resnet with embedding size {E} (keys and shapes match); pass "
                       f"teacher_network = 'tiny_resnet'")


def test_wrong_embedding_size_names_the_files(tmp_path, source):
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(ValueError, match=f"looks like a tiny_resnet with embedding size {E} .*; "
                                         f"pass embedding_size = {E}$"):
        build_teacher("tiny_resnet", path, 32, "cpu")


def test_unknown_keys_hint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="No registered backbone has these keys"):
        build_teacher("tiny_resnet", path, E, "cpu")


def test_check_embedding_sizes():
    check_embedding_sizes(512, 512)
    with pytest.raises(ValueError, match="teacher embedding size 512 != student embedding size 128"):
        check_embedding_sizes(512, 128)


# ----------------------------------------------------------------- teacher classifier


def _write_shards(folder, weight, world_size, name="checkpoint_gpu_{rank}.pt", legacy=False):
    paths, start = [], 0
    for rank, size in enumerate(shard_sizes(weight.shape[0], world_size)):
        shard = weight[start:start + size].clone()
        start += size
        path = folder / name.format(rank=rank)
        torch.save(shard if legacy else {"epoch": 1, "state_dict_softmax_fc": {"weight": shard}}, path)
        paths.append(path)
    return paths


def test_shard_sizes_formula():
    assert shard_sizes(85742, 8) == [10718] * 6 + [10717] * 2
    assert shard_sizes(93431, 8) == [11679] * 7 + [11678]


def test_shards_concatenate_in_rank_order(tmp_path):
    weight = torch.randn(23, 4)
    paths = _write_shards(tmp_path, weight, world_size=12)
    assert torch.equal(load_teacher_classifier(str(tmp_path / "checkpoint_gpu_*.pt"), 23, 4), weight)
    # a list in any order: the rank comes from the file name (glob order would put 10 before 2)
    assert torch.equal(load_teacher_classifier(list(reversed(paths)), 23, 4), weight)


def test_legacy_shards(tmp_path):
    weight = torch.randn(7, 4)
    _write_shards(tmp_path, weight, world_size=2, name="rank_{rank}_softmax_weight.pt", legacy=True)
    assert torch.equal(load_teacher_classifier(str(tmp_path / "rank_*_softmax_weight.pt"), 7, 4), weight)


def test_wrong_class_count(tmp_path):
    _write_shards(tmp_path, torch.randn(10, 4), world_size=3)
    with pytest.raises(ValueError, match=r"hold 10 classes \(\[4, 3, 3\]\), but num_classes=12; set num_classes=10"):
        load_teacher_classifier(str(tmp_path / "checkpoint_gpu_*.pt"), 12, 4)


def test_missing_rank_and_bad_split(tmp_path):
    paths = _write_shards(tmp_path, torch.randn(10, 4), world_size=3)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        load_teacher_classifier([paths[0], paths[2]], 10, 4)
    # sizes 3, 3, 4 add up to 10 but break arcface_torch's split (4, 3, 3)
    for rank, size in enumerate([3, 3, 4]):
        torch.save({"state_dict_softmax_fc": {"weight": torch.randn(size, 4)}}, paths[rank])
    with pytest.raises(ValueError, match="checkpoint_gpu_0.pt: rank 0 holds 3 classes.*as 4 for rank 0"):
        load_teacher_classifier(paths, 10, 4)


def test_shard_errors_name_the_file(tmp_path):
    paths = _write_shards(tmp_path, torch.randn(10, 4), world_size=1)
    with pytest.raises(ValueError, match="expected \\(num_local, 8\\)"):
        load_teacher_classifier(paths, 10, 8)
    odd = tmp_path / "teacher_fc.pt"
    torch.save({"state_dict_softmax_fc": {"weight": torch.randn(10, 4)}}, odd)
    with pytest.raises(ValueError, match="cannot tell the rank of .*teacher_fc.pt"):
        load_teacher_classifier(odd, 10, 4)
    with pytest.raises(FileNotFoundError, match="no teacher classifier files match"):
        load_teacher_classifier(str(tmp_path / "nope_*.pt"), 10, 4)
    other = tmp_path / "checkpoint_gpu_5.pt"
    torch.save({"epoch": 1}, other)
    with pytest.raises(ValueError, match="neither a Partial FC shard"):
        load_teacher_classifier(other, 10, 4)


@pytest.mark.parametrize("wrap", [lambda k: {"kernel": k}, lambda k: {"module.kernel": k},
                                  lambda k: {"state_dict": {"kernel": k}, "epoch": 3}])
def test_header_is_transposed(tmp_path, wrap):
    centres = torch.randn(10, 4)  # (C, E)
    path = tmp_path / "295672header.pth"
    torch.save(wrap(centres.t().contiguous()), path)  # stored as (E, C)
    assert torch.equal(load_teacher_classifier(path, 10, 4), centres)


def test_header_errors(tmp_path):
    path = tmp_path / "header.pth"
    torch.save({"kernel": torch.randn(4, 10)}, path)
    with pytest.raises(ValueError, match="holds 10 classes, but num_classes=11; set num_classes=10"):
        load_teacher_classifier(path, 11, 4)
    torch.save({"kernel": torch.randn(10, 4)}, path)
    with pytest.raises(ValueError, match="looks like \\(C, E\\)"):
        load_teacher_classifier(path, 10, 4)
    shard = _write_shards(tmp_path, torch.randn(10, 4), world_size=1)[0]
    with pytest.raises(ValueError, match="pass it alone"):
        load_teacher_classifier([path, shard], 10, 4)
