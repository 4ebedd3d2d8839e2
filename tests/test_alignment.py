"""5-point alignment: exact on similarity inputs, and the same crops as the host's skimage + cv2 path."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from insightface_adadistill.evaluation.alignment import (ARCFACE_TEMPLATE, align_face,
                                                         similarity_transform)


def _similarity(scale, angle_deg, tx, ty):
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx],
                     [scale * np.sin(a), scale * np.cos(a), ty]])


def _apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_is_the_shifted_arcface_template_in_float32():
    assert ARCFACE_TEMPLATE.dtype == np.float32 and ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE, [[38.2946, 51.6963], [73.5318, 51.5014],
                                                  [56.0252, 71.7366], [41.5493, 92.3655],
                                                  [70.7299, 92.2041]], atol=1e-5)


@pytest.mark.parametrize("scale, angle, tx, ty", [(1.0, 0, 0, 0), (1.7, 20, 40, 10), (0.6, -35, -5, 60)])
def test_landmarks_land_on_the_template(scale, angle, tx, ty):
    to_image = _similarity(scale, angle, tx, ty)
    landmarks = _apply(to_image, ARCFACE_TEMPLATE.astype(np.float64)).astype(np.float32)
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    assert np.abs(_apply(matrix, landmarks.astype(np.float64)) - ARCFACE_TEMPLATE).max() < 0.01


def test_aligned_crop_recovers_the_face_pattern():
    rng = np.random.default_rng(0)
    face = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112),
                      interpolation=cv2.INTER_CUBIC)
    to_image = _similarity(1.4, 12, 30, 20)
    loose = cv2.warpAffine(face, to_image, (220, 220))
    landmarks = _apply(to_image, ARCFACE_TEMPLATE.astype(np.float64))
    aligned = align_face(loose, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(aligned[inner].astype(int) - face[inner].astype(int)).mean() < 3.0
    assert (align_face(loose, landmarks + 400.0) == 0).all()  # outside the image: border 0


def _skimage_matrix(landmarks, template):
    """The host's call: skimage SimilarityTransform().estimate(landmarks, template)."""
    from skimage import transform

    tform = transform.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # estimate() is deprecated since 0.26
        tform.estimate(landmarks, template)
    return tform.params[:2]


def _random_landmarks(rng):
    points = ARCFACE_TEMPLATE * rng.uniform(0.8, 1.6) + rng.uniform(0, 60, 2) + rng.normal(0, 3, (5, 2))
    return points.astype(np.float32)


def test_same_matrix_as_skimage_on_the_hosts_float32_inputs():
    pytest.importorskip("skimage")
    rng = np.random.default_rng(1)
    for _ in range(50):
        landmarks = _random_landmarks(rng)
        np.testing.assert_array_equal(similarity_transform(landmarks, ARCFACE_TEMPLATE),
                                      _skimage_matrix(landmarks, ARCFACE_TEMPLATE))


def test_same_crop_as_insightface_norm_crop():
    face_align = pytest.importorskip("insightface.utils.face_align")
    rng = np.random.default_rng(2)
    image = cv2.GaussianBlur(rng.integers(0, 256, (200, 180, 3), dtype=np.uint8), (7, 7), 3)
    for _ in range(30):
        landmarks = _random_landmarks(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            expected = face_align.norm_crop(image, landmarks)
        # insightface writes the template as float32(70.7299); the host adds 8 to float32(62.7299),
        # one ulp apart, so compare with insightface's own template here
        matrix = similarity_transform(landmarks, face_align.arcface_dst)
        np.testing.assert_array_equal(cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0),
                                      expected)


@pytest.mark.parametrize("landmarks, message", [
    (np.zeros((4, 2)), "expected 5 finite"),
    (np.full((5, 2), np.nan), "expected 5 finite"),
    (np.full((5, 2), 7.0), "collinear or coincide"),
    (np.stack([np.arange(5.0), np.arange(5.0)], axis=1), "collinear or coincide"),
])
def test_degenerate_landmarks_are_refused(landmarks, message):
    with pytest.raises(ValueError, match=message):
        align_face(np.zeros((50, 50, 3), np.uint8), landmarks)
