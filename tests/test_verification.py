"""10-fold verification (host protocol): folds, thresholds, XNorm, the backbone driver and `adadistill verify`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.commands.verify import main as verify_main
from insightface_adadistill.evaluation.verification import (
    THRESHOLDS, VerificationSet, embed_images, evaluate_backbone, evaluate_embeddings, kfold_accuracy,
    kfold_splits, pair_distances, pixels_to_input)


@pytest.mark.parametrize("n", [10, 12, 25, 101, 6000])
def test_folds_equal_sklearn_kfold(n):
    from sklearn.model_selection import KFold

    ours = kfold_splits(n)
    theirs = list(KFold(n_splits=10, shuffle=False).split(np.arange(n)))
    assert len(ours) == len(theirs) == 10
    for (train, test), (train_ref, test_ref) in zip(ours, theirs):
        np.testing.assert_array_equal(train, train_ref)
        np.testing.assert_array_equal(test, test_ref)


def test_too_few_pairs_for_ten_folds():
    with pytest.raises(ValueError, match="9 pairs cannot be split into 10 folds"):
        kfold_splits(9)


def test_threshold_is_the_first_best_on_the_train_folds():
    # same pairs at distance 0.5, different at 1.5: every threshold in (0.5, 1.5] is perfect on the
    # train folds, and the first of them in the grid is 0.51.
    issame = np.array([True, False] * 20)
    distances = np.where(issame, 0.5, 1.5)
    accuracy, chosen = kfold_accuracy(distances, issame)
    np.testing.assert_array_equal(accuracy, np.ones(10))
    np.testing.assert_array_equal(chosen, np.full(10, THRESHOLDS[51]))
    assert chosen[0] == pytest.approx(0.51)


def test_kfold_accuracy_matches_a_direct_search():
    rng = np.random.default_rng(3)
    issame = rng.random(230) < 0.5
    distances = np.clip(np.where(issame, 0.9, 1.3) + rng.normal(0, 0.35, 230), 0, 4)
    accuracy, chosen = kfold_accuracy(distances, issame)
    for k, (train, test) in enumerate(kfold_splits(230)):
        train_acc = [np.mean((distances[train] < t) == issame[train]) for t in THRESHOLDS]
        best = THRESHOLDS[train_acc.index(max(train_acc))]
        assert chosen[k] == best
        assert accuracy[k] == np.mean((distances[test] < best) == issame[test])


def test_separable_embeddings_score_one_and_random_about_half():
    rng = np.random.default_rng(0)
    pairs = 300
    issame = np.arange(pairs) % 2 == 0
    ids = rng.normal(size=(pairs, 64))
    second = np.where(issame[:, None], ids, rng.normal(size=(pairs, 64)))
    emb = np.stack([ids, second], axis=1).reshape(2 * pairs, 64)  # (2P, D), pair i = rows 2i, 2i+1
    result = evaluate_embeddings(emb, emb, issame)
    assert result["accuracy"] == 1.0 and result["std"] == 0.0

    noise = rng.normal(size=(2 * pairs, 64))
    result = evaluate_embeddings(noise, rng.normal(size=(2 * pairs, 64)), issame)
    assert 0.35 < result["accuracy"] < 0.65


def test_xnorm_is_the_mean_raw_norm_over_both_sets_and_distance_uses_their_sum():
    orig = np.tile([2.0, 0.0], (20, 1))  # norm 2
    flip = np.tile([0.0, 4.0], (20, 1))  # norm 4
    result = evaluate_embeddings(orig, flip, np.ones(10, dtype=bool))
    assert result["xnorm"] == pytest.approx(3.0)
    np.testing.assert_allclose(pair_distances(np.array([[1.0, 0.0], [0.0, 3.0]])), [2.0])


class MeanColour(nn.Module):
    """Stub backbone: (B, 3, H, W) -> (B, 8) from the left and right halves' mean colour."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        half = x.shape[3] // 2
        colours = torch.cat([x[..., :half].mean(dim=(2, 3)), x[..., half:].mean(dim=(2, 3))], dim=1)
        return self.bn(self.proj(colours))


def _tiny_set(pairs=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * pairs, 3, 112, 112), dtype=torch.uint8, generator=gen)
    return VerificationSet("tiny", images, np.arange(pairs) % 2 == 0)


def test_evaluate_backbone_embeds_flips_and_restores_training_mode():
    model = MeanColour().train()
    vset = _tiny_set()
    result = evaluate_backbone(model, vset, batch_size=7)
    assert model.training
    with torch.no_grad():
        model.eval()
        x = pixels_to_input(vset.images)
        orig, flip = model(x).double().numpy(), model(torch.flip(x, dims=[3])).double().numpy()
    assert result == pytest.approx(evaluate_embeddings(orig, flip, vset.issame), rel=1e-6)
    assert not np.allclose(orig, flip)  # the flip really mirrors the image
    assert evaluate_backbone(nn.DataParallel(MeanColour().eval()), vset) != {}


def test_pixels_to_input_is_the_host_formula():
    pixels = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 2, 2)
    expected = torch.tensor([-1.0, 127 / 127.5 - 1, 128 / 127.5 - 1, 1.0]).reshape(1, 1, 2, 2)
    torch.testing.assert_close(pixels_to_input(pixels), expected)


def test_ddp_wrapped_backbone_is_unwrapped(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = MeanColour()
        wrapped = nn.parallel.DistributedDataParallel(model)
        vset = _tiny_set(10)
        assert evaluate_backbone(wrapped, vset) == pytest.approx(evaluate_backbone(model, vset))
        assert wrapped.training
    finally:
        dist.destroy_process_group()


def test_set_validation_names_the_set():
    with pytest.raises(ValueError, match="tiny: 4 images for"):
        VerificationSet("tiny", torch.zeros((4, 3, 8, 8), dtype=torch.uint8), np.ones(3, dtype=bool))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(get_model("tiny_mfn", num_features=32).state_dict(), path)
    return path


def test_verify_main_prints_each_set_and_writes_json(fixtures_dir, tiny_weights, tmp_path, capsys):
    out = tmp_path / "verify.json"
    bins = [str(fixtures_dir / "bins" / n) for n in ("tiny_py2.bin", "tiny_py3.bin")]
    rc = verify_main(["--network", "tiny_mfn", "--model", str(tiny_weights),  # embedding size 32 from the file
                      "--batch-size", "16", "--json", str(out), "--device", "cpu", *bins])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["tiny_py2", "tiny_py3"]
    assert " ± " in lines[0] and "XNorm" in lines[0]
    payload = json.loads(out.read_text())
    sets = payload["sets"]
    assert sets["tiny_py2"] == sets["tiny_py3"]  # same images, two pickle flavours
    assert sets["tiny_py2"]["pairs"] == 12 and 0.0 <= sets["tiny_py2"]["accuracy"] <= 1.0
    assert sets["tiny_py2"]["xnorm"] > 0


def test_verify_main_names_the_network_a_wrong_one_should_have_been(fixtures_dir, tiny_weights):
    bins = [str(fixtures_dir / "bins" / "tiny_py3.bin")]
    with pytest.raises(ValueError) as info:
        verify_main(["--network", "tiny_resnet", "--embedding-size", "32", "--model", str(tiny_weights),
                     "--device", "cpu", *bins])
    assert str(info.value) == (f"{tiny_weights}: does not fit --network tiny_resnet with embedding size 32: "
                               "this file looks like a tiny_mfn with embedding size 32 (keys and shapes "
                               "match); pass --network tiny_mfn")


def test_verify_main_refuses_an_embedding_size_the_file_does_not_have(fixtures_dir, tiny_weights):
    bins = [str(fixtures_dir / "bins" / "tiny_py3.bin")]
    with pytest.raises(ValueError) as info:
        verify_main(["--network", "tiny_mfn", "--embedding-size", "512", "--model", str(tiny_weights), *bins])
    assert str(info.value) == (f"{tiny_weights}: does not fit --network tiny_mfn with embedding size 512: "
                               "this file looks like a tiny_mfn with embedding size 32 (keys and shapes "
                               "match); pass --embedding-size 32")


def test_embed_images_batch_size_does_not_change_embeddings():
    model, vset = MeanColour().eval(), _tiny_set(6)
    a = embed_images(model, vset.images, batch_size=5)
    b = embed_images(model, vset.images, batch_size=64)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
