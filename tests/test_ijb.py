"""IJB 1:1 protocol on a tiny synthetic IJB folder: pooling, switches, scores, outputs, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.commands.eval_ijb import main as ijb_main
from insightface_adadistill.evaluation.alignment import ARCFACE_TEMPLATE
from insightface_adadistill.evaluation.ijb import (
    AlignedFaces, IJBDataError, backbone_embedder, evaluate_ijb, image_features, onnx_embedder, pair_scores,
    pool_templates, read_meta, tar_at_far)
from insightface_adadistill.outputs import CLAIM_FILES

# subject -> templates -> medias -> number of images
LAYOUT = {0: {1: {10: 2, 11: 1}, 2: {12: 1}},
          1: {3: {13: 1, 14: 2}, 4: {15: 3}},
          2: {5: {16: 1}, 6: {17: 2, 18: 1}}}


def _face(subject: int) -> np.ndarray:
    """A smooth random colour pattern, one per subject, as a 112x112 'aligned face'."""
    rng = np.random.default_rng(100 + subject)
    return cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (112, 112),
                      interpolation=cv2.INTER_CUBIC)


def _write_ijb(root: Path, target: str = "IJBC") -> Path:
    """loose_crop/ images made by warping each subject's face with a random similarity, and the
    three meta files with the landmarks that warp implies."""
    rng = np.random.default_rng(0)
    t = target.lower()
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    tid_mid, lmk_lines, subject_of = [], [], {}
    index = 0
    for subject, templates in LAYOUT.items():
        for tid, medias in templates.items():
            subject_of[tid] = subject
            for mid, count in medias.items():
                for _ in range(count):
                    index += 1
                    angle, scale = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(1.1, 1.6)
                    to_image = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 0.0],
                                         [scale * np.sin(angle), scale * np.cos(angle), 0.0]])
                    to_image[:, 2] = rng.uniform(10, 40, 2)
                    loose = cv2.warpAffine(_face(subject), to_image, (220, 220))
                    name = f"{index}.jpg"
                    cv2.imwrite(str(root / "loose_crop" / name), loose, [cv2.IMWRITE_JPEG_QUALITY, 98])
                    points = ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]  # (5, 2)
                    faceness = rng.uniform(0.5, 1.0)
                    tid_mid.append(f"{name} {tid} {mid}")
                    lmk_lines.append(" ".join([name, *(f"{v:.3f}" for v in points.ravel()),
                                               f"{faceness:.3f}"]))
    tids = sorted(subject_of)
    pairs = [f"{a} {b} {int(subject_of[a] == subject_of[b])}"
             for i, a in enumerate(tids) for b in tids[i + 1:]]
    (root / "meta" / f"{t}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (root / "meta" / f"{t}_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    (root / "meta" / f"{t}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory) -> Path:
    return _write_ijb(tmp_path_factory.mktemp("IJBC"))


@pytest.fixture
def broken_root(ijb_root, tmp_path) -> Path:
    """A private copy the test may damage."""
    return Path(shutil.copytree(ijb_root, tmp_path / "IJBC"))


class PooledColour(nn.Module):
    """Stub backbone: (B, 3, 112, 112) -> (B, 48) 4x4 mean colours, centred on the inner face."""

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x[..., 16:-16, 16:-16], 4).flatten(1)


def _stub_embed(x: torch.Tensor) -> np.ndarray:
    return PooledColour()(x).numpy()


def test_meta_is_read_row_aligned(ijb_root):
    meta = read_meta(ijb_root, "IJBC")
    assert len(meta.image_names) == 14 and meta.landmarks.shape == (14, 5, 2)
    assert meta.landmarks.dtype == np.float32 and meta.faceness.dtype == np.float32
    assert meta.pairs.shape == (15, 2) and meta.labels.sum() == 3
    assert meta.templates[:3].tolist() == [1, 1, 1] and meta.medias[:3].tolist() == [10, 10, 11]


def test_pool_templates_by_hand():
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    templates = np.array([1, 1, 2, 1])
    medias = np.array([10, 11, 20, 10])
    unique, pooled = pool_templates(features, templates, medias)
    # template 1: media 10 = mean([1,0],[3,0]) = [2,0], media 11 = [0,1]; sum [2,1]
    np.testing.assert_array_equal(unique, [1, 2])
    np.testing.assert_allclose(pooled, [[2 / np.sqrt(5), 1 / np.sqrt(5)], [0.0, 1.0]])


def test_pool_templates_equals_the_per_template_loop():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    templates, medias = rng.integers(0, 30, 200), rng.integers(0, 5, 200)
    unique, pooled = pool_templates(features, templates, medias)
    for row, tid in enumerate(unique):
        in_t = templates == tid
        summed = sum(features[in_t & (medias == m)].astype(np.float64).mean(axis=0)
                     for m in np.unique(medias[in_t]))
        np.testing.assert_allclose(pooled[row], summed / np.linalg.norm(summed), rtol=1e-6)


def test_pair_scores_are_cosines_and_unknown_templates_are_refused():
    unique = np.array([3, 7])
    feats = np.array([[1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(pair_scores(unique, feats, np.array([[3, 7], [7, 7], [3, 3]])),
                               [0.6, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"templates \[5\]"):
        pair_scores(unique, feats, np.array([[3, 5]]))


def test_switches_change_what_they_should():
    orig = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    flip = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    faceness = np.array([0.5, 2.0], dtype=np.float32)
    np.testing.assert_allclose(image_features(orig, flip, faceness, True, False), orig + flip)  # F1
    np.testing.assert_allclose(image_features(orig, None, faceness, True, False), orig)  # F0
    np.testing.assert_allclose(image_features(orig, None, faceness, False, False),
                               [[0.6, 0.8], [1.0, 0.0]])  # N0: unit rows
    np.testing.assert_allclose(image_features(orig, None, faceness, False, True),
                               [[0.3, 0.4], [2.0, 0.0]])  # N0 D1: unit rows times faceness
    np.testing.assert_allclose(image_features(orig, flip, faceness), [[2.0, 2.0], [2.0, 4.0]])


def test_aligned_faces_are_rgb_crops_of_the_subject(ijb_root):
    meta = read_meta(ijb_root, "IJBC")
    faces = AlignedFaces([meta.image_dir / n for n in meta.image_names], meta.landmarks)
    face = faces[0]
    assert face.shape == (3, 112, 112) and face.dtype == torch.uint8
    expected_rgb = cv2.cvtColor(_face(0), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
    assert np.abs(face.numpy()[:, 16:-16, 16:-16].astype(int)
                  - expected_rgb[:, 16:-16, 16:-16].astype(int)).mean() < 4.0


def test_evaluate_separates_subjects_and_matches_sklearn(ijb_root):
    from sklearn.metrics import roc_curve as sk_roc_curve

    result = evaluate_ijb(_stub_embed, ijb_root, "IJBC", batch_size=8, workers=0, progress=False)
    scores, labels = result["scores"], result["labels"]
    assert scores[labels == 1].min() > scores[labels == 0].max()
    assert all(v == 1.0 for v in result["tar_at_far"].values())
    assert result["mode"] == "N1D1F1"
    assert result["counts"] == {"images": 14, "templates": 6, "pairs": 15, "genuine": 3,
                                "impostor": 12, "embedding_size": 48}
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    np.testing.assert_array_equal(result["fpr"], fpr)
    assert tar_at_far(labels, scores) == result["tar_at_far"]


def test_switches_change_the_scores_end_to_end(ijb_root):
    runs = {(f, n, d): evaluate_ijb(_stub_embed, ijb_root, batch_size=8, workers=0, flip=f,
                                    norm_score=n, detector_score=d)["scores"]
            for f, n, d in [(True, True, True), (False, True, True), (True, False, True),
                            (True, True, False)]}
    base = runs[(True, True, True)]
    for key, scores in runs.items():
        if key != (True, True, True):
            assert not np.allclose(scores, base), key


def test_worker_processes_give_the_same_scores(ijb_root):
    inline = evaluate_ijb(_stub_embed, ijb_root, batch_size=8, workers=0)["scores"]
    pooled = evaluate_ijb(_stub_embed, ijb_root, batch_size=8, workers=1)["scores"]
    np.testing.assert_array_equal(inline, pooled)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(get_model("tiny_mfn", num_features=32).state_dict(), path)
    return path


def test_eval_ijb_command_writes_every_output(ijb_root, tiny_weights, tmp_path, capsys):
    rc = ijb_main(["--model-prefix", str(tiny_weights), "--network", "tiny_mfn",  # embedding size 32 from the file
                   "--image-path", str(ijb_root), "--target", "IJBC",
                   "--result-dir", str(tmp_path), "--job", "tiny", "--batch-size", "8",
                   "--workers", "0", "--device", "cpu"])
    assert rc == 0
    out_dir = tmp_path / "tiny"
    assert sorted(p.name for p in out_dir.iterdir() if p.name not in CLAIM_FILES) == [
        "ijbc.csv", "ijbc.json", "ijbc.npy", "ijbc.pdf", "ijbc.png", "ijbc.txt"]
    assert np.load(out_dir / "ijbc.npy").shape == (15,)
    summary = json.loads((out_dir / "ijbc.json").read_text())
    assert summary["mode"] == "N1D1F1" and summary["network"] == "tiny_mfn"
    assert list(summary["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    printed = capsys.readouterr().out
    assert "| tiny-IJBC |" in printed and "Methods" in printed
    assert (out_dir / "ijbc.txt").read_text() in printed


def _linear_onnx(path: Path, weight: np.ndarray, batch: int | str) -> None:
    """An ONNX model computing PooledColour then a matrix product, built directly with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Slice", ["data", "starts", "ends", "axes"], ["inner"]),
             helper.make_node("AveragePool", ["inner"], ["pooled"], kernel_shape=[20, 20],
                              strides=[20, 20]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "weight"], ["embedding"])]
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
             for n, v in [("starts", [16, 16]), ("ends", [-16, -16]), ("axes", [2, 3])]]
    inits.append(numpy_helper.from_array(weight.astype(np.float32), "weight"))
    graph = helper.make_graph(
        nodes, "stub", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, weight.shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("batch", ["N", 3])
def test_onnx_model_gives_the_torch_scores(ijb_root, tmp_path, batch):
    pytest.importorskip("onnxruntime")
    weight = np.eye(48)
    path = tmp_path / "stub.onnx"
    _linear_onnx(path, weight, batch)
    embed = onnx_embedder(path, torch.device("cpu"))
    x = torch.randn(7, 3, 112, 112)
    np.testing.assert_allclose(embed(x), _stub_embed(x), rtol=1e-5, atol=1e-6)
    via_onnx = evaluate_ijb(embed, ijb_root, batch_size=8, workers=0)["scores"]
    via_torch = evaluate_ijb(backbone_embedder(PooledColour(), torch.device("cpu")), ijb_root,
                             batch_size=8, workers=0)["scores"]
    np.testing.assert_allclose(via_onnx, via_torch, rtol=1e-5)


def _edit(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_missing_meta_file_is_named(broken_root):
    (broken_root / "meta" / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(IJBDataError, match="ijbc_template_pair_label.txt"):
        read_meta(broken_root, "IJBC")
    with pytest.raises(IJBDataError, match="ijbb_face_tid_mid.txt"):
        read_meta(broken_root, "IJBB")


def test_landmark_rows_out_of_order_are_named(broken_root):
    path = broken_root / "meta" / "ijbc_name_5pts_score.txt"
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IJBDataError, match=r"ijbc_name_5pts_score.txt:3: image '4.jpg'.*'3.jpg'"):
        read_meta(broken_root, "IJBC")


def test_pair_with_a_template_without_images_is_named(broken_root):
    _edit(broken_root / "meta" / "ijbc_template_pair_label.txt", 2, "1 999 0")
    with pytest.raises(IJBDataError, match=r"ijbc_template_pair_label.txt:2: template 999"):
        read_meta(broken_root, "IJBC")


@pytest.mark.parametrize("file, lineno, text, message", [
    ("ijbc_template_pair_label.txt", 4, "1 2 2", r":4: label 2 is not 0"),
    ("ijbc_template_pair_label.txt", 5, "1 x 0", r":5: invalid literal"),
    ("ijbc_template_pair_label.txt", 6, "1 2", r":6: expected 3 fields"),
    ("ijbc_face_tid_mid.txt", 7, "7.jpg 2", r":7: expected 3 fields"),
    ("ijbc_name_5pts_score.txt", 8, "8.jpg 1 2 3 4 5 6 7 8 9 ten 0.9", r":8: could not convert"),
])
def test_malformed_lines_are_named(broken_root, file, lineno, text, message):
    _edit(broken_root / "meta" / file, lineno, text)
    with pytest.raises(IJBDataError, match=file.replace(".", r"\.") + message):
        read_meta(broken_root, "IJBC")


def test_missing_and_corrupt_images_are_named(broken_root):
    (broken_root / "loose_crop" / "5.jpg").write_bytes(b"not an image")
    with pytest.raises(IJBDataError, match=r"5.jpg: OpenCV cannot read"):
        evaluate_ijb(_stub_embed, broken_root, workers=0)
    (broken_root / "loose_crop" / "5.jpg").unlink()
    with pytest.raises(IJBDataError, match=r"1 image\(s\).*missing.*'5.jpg' \(line 5\)"):
        read_meta(broken_root, "IJBC")


def test_command_line_needs_a_model(ijb_root, capsys):
    with pytest.raises(SystemExit):
        ijb_main(["--image-path", str(ijb_root)])
    assert "--model-prefix and --network, or --onnx" in capsys.readouterr().err
