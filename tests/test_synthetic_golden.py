"""The synthetic data is a fixture: a fixed seed must keep producing the same bytes.

The hashes were recorded before the renderer moved into `insightface_adadistill.synthetic`, and hold
with numpy's AVX-512, AVX2 and baseline x86-64 kernels alike (checked with
`NPY_DISABLE_CPU_FEATURES`). A change here changes every demo and benchmark number: update the
hashes only on purpose, and say so in the commit.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from insightface_adadistill.synthetic.identities import SyntheticFaceConfig
from insightface_adadistill.synthetic.renderer import SyntheticFaces
from insightface_adadistill.synthetic.suite import build_synthetic_suite

SUITE_FILES = {
    "IJBC/meta/ijbc_face_tid_mid.txt": "55ce7d2d9aa90738",
    "IJBC/meta/ijbc_name_5pts_score.txt": "2980e88cec98560a",
    "IJBC/meta/ijbc_template_pair_label.txt": "c4cf7ca983773162",
    "train/property": "db7cc791ac04dd3e",
    "train/synth_val.bin": "c99d7e1fb95dfdd8",
    "train/train.idx": "b46568c31069dd5e",
    "train/train.rec": "5764a4c917df1ef8",
}
LOOSE_CROPS = "f25ac00134975a1d"
# difficulty -> (aligned pixels, unaligned pixels + landmarks + faceness)
RENDERS = {
    "easy": ("fba6a08743675940", "037be9a18ddc68d7"),
    "medium": ("457eaef83202bd6e", "e1e992b6f2c2b7a4"),
    "hard": ("9036ee0bfdb9dcba", "e2020b91df45bbf1"),
}


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def test_suite_files_keep_their_bytes(tmp_path: Path) -> None:
    build_synthetic_suite(tmp_path, num_train_ids=6, images_per_id=4, num_heldout_ids=4, seed=3,
                          num_val_pairs=20, ijb_templates_per_identity=3, ijb_media_per_template=2,
                          ijb_images_per_media=2)
    assert {name: _digest((tmp_path / name).read_bytes()) for name in SUITE_FILES} == SUITE_FILES
    crops = sorted((tmp_path / "IJBC" / "loose_crop").iterdir(), key=lambda p: int(p.stem))
    assert _digest(*(p.read_bytes() for p in crops)) == LOOSE_CROPS


@pytest.mark.parametrize("level", sorted(RENDERS))
def test_renders_keep_their_pixels(level: str) -> None:
    faces = SyntheticFaces(SyntheticFaceConfig.difficulty(level), seed=11)
    ids, seeds = np.repeat(np.arange(8), 9), np.tile(np.arange(9), 8)
    aligned = faces.render_aligned(ids, seeds)
    images, landmarks, faceness = faces.render_unaligned(ids, seeds)
    assert (_digest(aligned.tobytes()),
            _digest(images.tobytes(), landmarks.tobytes(), faceness.tobytes())) == RENDERS[level]
