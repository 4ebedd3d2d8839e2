"""5-point face alignment to the ArcFace 112x112 template (arcface_torch's IJB protocol).

The host estimates a `skimage` SimilarityTransform (Umeyama's least-squares similarity with scale)
from the 5 landmarks to the template and warps with `cv2.warpAffine` (bilinear, border 0).
`insightface.utils.face_align.norm_crop` does exactly that, but it calls a scikit-image API that is
deprecated since 0.26 and the `insightface` import itself pulls in onnxruntime and edits
`os.environ`; so we solve the same least-squares problem in numpy, in the same arithmetic (tests
check the crops are identical to `norm_crop`'s). OpenCV is imported only to warp, so the template
serves numpy-only code (the synthetic renderer) too.
"""
from __future__ import annotations

import numpy as np

ALIGNED_SIZE = 112
# (x, y) of left eye, right eye, nose tip, left and right mouth corner: the classic 96x112 ArcFace
# template, shifted +8 in x for the 112x112 crop.
_TEMPLATE_96X112 = ((30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655),
                    (62.7299, 92.2041))
# Built in float32 exactly as the host does (the shifted right-mouth x is 1 ulp away from
# float32(70.7299)), so our crops match its bit for bit.
ARCFACE_TEMPLATE = np.array(_TEMPLATE_96X112, dtype=np.float32) + np.array([8.0, 0.0], dtype=np.float32)
# The same points in float64, for geometry that is not the host's warp (the synthetic renderer).
ARCFACE_TEMPLATE_64 = np.array(_TEMPLATE_96X112, dtype=np.float64) + np.array([8.0, 0.0])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) float64 affine M, dst ≈ M @ [x, y, 1]: the least-squares similarity (rotation, uniform
    scale, translation) mapping the (K, 2) points src onto dst, K >= 2.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns", eqs. 38-43, reflections excluded through the sign of det(covariance). The means,
    covariance and SVD run in the inputs' dtype, as in scikit-image (float32 for the host's
    landmarks): computing them in float64 moves the matrix by ~1e-5 and flips a few crop pixels.
    """
    src, dst = np.asarray(src), np.asarray(dst)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / src.shape[0]  # (2, 2)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[1] = -1.0
    u, singular, vt = np.linalg.svd(covariance)
    if np.count_nonzero(singular > singular.max() * 2 * np.finfo(float).eps) < 2:
        raise ValueError(f"landmarks {src.tolist()} are collinear or coincide; a similarity "
                         "transform is undefined - check the landmark file")
    rotation = u @ np.diag(signs) @ vt  # (2, 2) float64
    scale = 1.0 / src_c.var(axis=0).sum() * (singular @ signs)
    matrix = np.empty((2, 3))
    matrix[:, 2] = dst_mean - scale * (rotation @ src_mean)
    matrix[:, :2] = rotation * scale
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 face -> its (112, 112, 3) ArcFace crop, channel order kept (BGR in, BGR out).

    `landmarks`: (5, 2) pixel (x, y) of left eye, right eye, nose, left and right mouth corner.
    Pixels outside the source image are 0.
    """
    import cv2

    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (5, 2) or not np.all(np.isfinite(landmarks)):
        raise ValueError(f"expected 5 finite (x, y) landmarks, got shape {landmarks.shape}: "
                         f"{landmarks.tolist()}")
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    return cv2.warpAffine(image, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), borderValue=0.0)
