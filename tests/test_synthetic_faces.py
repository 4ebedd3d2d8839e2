"""Synthetic faces: determinism, geometry the renderer reports, difficulty, and the real readers."""
from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from insightface_adadistill.commands.make_synthetic import main as make_synthetic_main
from insightface_adadistill.data.bins import decode_bin, load_bin
from insightface_adadistill.data.datasets import RecordDataset
from insightface_adadistill.data.decode import decode_image
from insightface_adadistill.evaluation.alignment import ARCFACE_TEMPLATE, align_face, similarity_transform
from insightface_adadistill.evaluation.ijb import AlignedFaces, read_meta
from insightface_adadistill.outputs import OutputFolderError
from insightface_adadistill.synthetic.identities import SyntheticFaceConfig, derive_seeds, identity_traits
from insightface_adadistill.synthetic.renderer import SyntheticFaces
from insightface_adadistill.synthetic.suite import (build_synthetic_suite, heldout_start, write_ijb_folder,
                                                    write_training_rec, write_verification_bin)

CLEAN = SyntheticFaceConfig(nuisance=0.0)


def _batch(n_ids: int, per_id: int, offset: int = 0):
    return np.repeat(np.arange(n_ids) + offset, per_id), np.tile(np.arange(per_id), n_ids)


def test_same_seed_same_bytes_other_seed_other_faces():
    ids, seeds = _batch(3, 4)
    a, b, c = SyntheticFaces(seed=5), SyntheticFaces(seed=5), SyntheticFaces(seed=6)
    assert a.render_aligned(ids, seeds).tobytes() == b.render_aligned(ids, seeds).tobytes()
    assert np.abs(a.render_aligned(ids, seeds).astype(int) - c.render_aligned(ids, seeds)).mean() > 10
    ua, ub = a.render_unaligned(ids, seeds), b.render_unaligned(ids, seeds)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(ua, ub))
    assert not np.array_equal(a.render_aligned(ids, seeds + 1), a.render_aligned(ids, seeds))


def test_a_face_does_not_depend_on_its_batch():
    faces = SyntheticFaces(seed=1)
    ids, seeds = _batch(10, 8)  # 80 images: more than one internal chunk
    together = faces.render_aligned(ids, seeds)
    order = np.random.default_rng(0).permutation(len(ids))[:5]
    alone = faces.render_aligned(ids[order], seeds[order])
    assert np.array_equal(together[order], alone)


def test_shapes_dtypes_and_faceness_range():
    faces = SyntheticFaces(SyntheticFaceConfig(unaligned_size=160), seed=0)
    ids, seeds = _batch(2, 3)
    aligned = faces.render_aligned(ids, seeds)
    assert aligned.shape == (6, 112, 112, 3) and aligned.dtype == np.uint8
    images, landmarks, faceness = faces.render_unaligned(ids, seeds)
    assert images.shape == (6, 160, 160, 3) and images.dtype == np.uint8
    assert landmarks.shape == (6, 5, 2) and landmarks.dtype == np.float32
    assert faceness.shape == (6,) and faceness.dtype == np.float32
    assert np.all((faceness > 0.5) & (faceness <= 1.0))
    assert faces.render_aligned(np.zeros(0, int), np.zeros(0, int)).shape == (0, 112, 112, 3)


def test_aligned_landmarks_sit_on_the_template():
    ids, seeds = _batch(40, 5)
    _, landmarks, _ = SyntheticFaces(seed=2)._render_all(ids, seeds, aligned=True)
    assert np.abs(landmarks.mean(0) - ARCFACE_TEMPLATE).max() < 1.0  # (5, 2) mean over 200 faces
    assert np.abs(landmarks - ARCFACE_TEMPLATE).max() < 12  # identity geometry + detector jitter


def test_unaligned_landmarks_align_to_the_template():
    faces = SyntheticFaces(seed=3)
    _, landmarks, _ = faces.render_unaligned(*_batch(20, 4))
    residuals = []
    for points in landmarks:
        matrix = similarity_transform(points, ARCFACE_TEMPLATE)  # (2, 3)
        mapped = points @ matrix[:, :2].T + matrix[:, 2]
        residuals.append(np.sqrt(((mapped - ARCFACE_TEMPLATE) ** 2).sum(1).mean()))
    # what is left is identity shape, pitch/yaw and expression: ~1.7 px RMS, like real 5-point data
    assert np.mean(residuals) < 3.0 and np.max(residuals) < 5.0


def test_recorded_landmarks_are_where_the_renderer_drew():
    faces = SyntheticFaces(CLEAN, seed=4)
    ids, seeds = _batch(6, 1)
    images, landmarks, _ = faces.render_unaligned(ids, seeds)
    for image, points in zip(images, landmarks):
        for x, y in points[:2]:  # eye landmarks sit on the (dark) pupil
            assert image[int(round(y)), int(round(x))].mean() < 60
    # aligning the loose crop with its landmarks reproduces the aligned render (clean config)
    aligned = faces.render_aligned(ids, seeds)
    realigned = np.stack([align_face(image, points) for image, points in zip(images, landmarks)])
    assert np.abs(realigned[:, 8:-8, 8:-8].astype(int) - aligned[:, 8:-8, 8:-8]).mean() < 6


def test_identities_separable_but_not_trivially():
    faces = SyntheticFaces(seed=7)
    n_ids, per_id = 20, 10
    ids, seeds = _batch(n_ids, per_id)
    x = faces.render_aligned(ids, seeds)[:, ::4, ::4].reshape(n_ids, per_id, -1).astype(np.float32)
    centroids = x[:, :5].mean(1)  # (C, D) from the first 5 images of each identity
    test = x[:, 5:].reshape(-1, x.shape[-1])  # (C * 5, D)
    distances = ((test[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == np.repeat(np.arange(n_ids), 5)).mean()
    assert 3 / n_ids < accuracy < 0.95, accuracy  # well above chance (0.05), well below perfect


def test_siblings_share_traits():
    config = SyntheticFaceConfig(family_size=4, trait_similarity=0.8)
    traits = identity_traits(config, 0, np.arange(400))
    geometry = np.stack([traits[k] for k in ("eye_half_gap", "mouth_y", "face_rx", "nose_y")], 1)
    same = np.abs(geometry[0::4] - geometry[1::4]).mean()  # siblings
    other = np.abs(geometry[0::4] - geometry[2::4][::-1]).mean()  # mostly other families
    assert same < 0.75 * other
    assert SyntheticFaces(config, 0).identity(5)["skin"].shape == (3,)


def test_config_and_input_errors_are_explicit():
    with pytest.raises(ValueError, match="trait_similarity"):
        SyntheticFaceConfig(trait_similarity=1.0)
    with pytest.raises(ValueError, match="noise_max"):
        SyntheticFaceConfig(noise_max=-1)
    with pytest.raises(ValueError, match="unknown difficulty"):
        SyntheticFaceConfig.difficulty("extreme")
    assert SyntheticFaceConfig.difficulty("medium") == SyntheticFaceConfig()
    faces = SyntheticFaces(seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        faces.render_aligned(np.array([-1]), np.array([0]))
    with pytest.raises(ValueError, match="equal length"):
        faces.render_aligned(np.array([0, 1]), np.array([0]))
    assert len(np.unique(derive_seeds(0, 1, np.zeros(50, int), np.arange(50)))) == 50


def test_training_rec_reads_back_with_the_project_reader(tmp_path):
    faces = SyntheticFaces(seed=0)
    out = write_training_rec(tmp_path, faces, [7, 3, 9], images_per_identity=4, seed=1)
    assert out == {"num_classes": 3, "num_images": 12}
    dataset = RecordDataset(tmp_path / "train.rec", seed=0, flip=False)
    assert len(dataset) == 12 and dataset.num_classes_found == 3
    assert dataset.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (tmp_path / "property").read_text().strip() == "3,112,112"
    image, label = dataset[5][:2]
    assert tuple(image.shape) == (3, 112, 112) and int(label) == 1


def test_verification_bin_loads_with_evaluation_bins(tmp_path):
    path = tmp_path / "synth_val.bin"
    out = write_verification_bin(path, SyntheticFaces(seed=0), range(100, 112), num_pairs=40, seed=2)
    assert out == {"num_pairs": 40, "num_genuine": 20}
    images, issame = load_bin(path)
    assert len(images) == 80 and sum(issame) == 20
    assert 0 < sum(issame[:20]) < 20  # shuffled: the consecutive 10-fold split sees both kinds
    assert tuple(decode_bin(images[:4]).shape) == (4, 3, 112, 112)


def test_ijb_folder_reads_back_with_the_ijb_reader(tmp_path):
    faces = SyntheticFaces(seed=0)
    ids = [40, 41, 42, 45]
    out = write_ijb_folder(tmp_path, faces, ids, target="IJBB", templates_per_identity=3,
                           media_per_template=2, images_per_media=2, seed=5)
    meta = read_meta(tmp_path, "IJBB")
    n_templates = len(ids) * 3
    assert out["num_images"] == len(meta.image_names) == n_templates * 4
    assert out["num_genuine"] == int(meta.labels.sum()) == len(ids) * comb(3, 2)
    assert out["num_impostor"] == comb(n_templates, 2) - len(ids) * comb(3, 2)
    assert len(np.unique(meta.templates)) == n_templates and len(np.unique(meta.medias)) == n_templates * 2
    # row i of the landmark file describes image i: re-render it and compare the recorded points
    seeds = derive_seeds(5, 3, np.repeat(ids, 12), np.arange(len(meta.image_names)))
    _, landmarks, faceness = faces.render_unaligned(np.repeat(ids, 12)[:3], seeds[:3])
    np.testing.assert_allclose(meta.landmarks[:3], landmarks, atol=6e-4)
    np.testing.assert_allclose(meta.faceness[:3], faceness, atol=6e-4)
    first = meta.image_dir / meta.image_names[0]
    assert decode_image(first.read_bytes()).shape == (176, 176, 3)
    assert tuple(AlignedFaces([first], meta.landmarks[:1])[0].shape) == (3, 112, 112)  # host alignment


def test_suite_writes_everything_and_holds_out_whole_families(tmp_path):
    paths = build_synthetic_suite(tmp_path, num_train_ids=6, images_per_id=2, num_heldout_ids=4, seed=0,
                                  num_val_pairs=10, ijb_templates_per_identity=2,
                                  ijb_media_per_template=1, ijb_images_per_media=1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["heldout_identities"] == [8, 12] == [heldout_start(6, 4), heldout_start(6, 4) + 4]
    assert manifest["written"]["train"] == {"num_classes": 6, "num_images": 12}
    assert load_bin(paths["synth_val"])[1] and read_meta(paths["ijb"], "IJBC").pairs.size
    assert (tmp_path / "train" / "synth_val.bin").is_file() and (tmp_path / "train" / "train.idx").is_file()


def test_make_synthetic_command(tmp_path, capsys):
    args = ["--train-ids", "3", "--images-per-id", "2", "--heldout-ids", "2", "--val-pairs", "4"]
    assert make_synthetic_main([str(tmp_path / "ok"), *args, "--target", "IJBB"]) == 0
    assert "val_targets=['synth_val']" in capsys.readouterr().out
    assert read_meta(tmp_path / "ok" / "IJBB", "IJBB").labels.sum() == 2 * comb(3, 2)
    assert make_synthetic_main([str(tmp_path / "bad"), "--train-ids", "0"]) == 1
    assert "identity_ids" in capsys.readouterr().err


def test_make_synthetic_refuses_an_existing_dataset_without_the_flag(tmp_path, capsys):
    args = [str(tmp_path / "ds"), "--train-ids", "2", "--images-per-id", "2", "--heldout-ids", "2",
            "--val-pairs", "2", "--difficulty", "easy"]
    assert make_synthetic_main(args) == 0
    first = (tmp_path / "ds" / "train" / "train.rec").read_bytes()
    capsys.readouterr()
    with pytest.raises(OutputFolderError, match="already holds .*train.*pass --overwrite"):
        make_synthetic_main([*args, "--seed", "1"])
    assert (tmp_path / "ds" / "train" / "train.rec").read_bytes() == first
    assert make_synthetic_main([*args, "--seed", "1", "--overwrite"]) == 0
    assert (tmp_path / "ds" / "train" / "train.rec").read_bytes() != first
