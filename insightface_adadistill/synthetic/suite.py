"""Write a synthetic face population as the files real data comes in (a fixture generator).

Every writer goes through the project's own writers (`.rec`, `.bin`, IJB meta), so training and
evaluation read synthetic data with the same code as MS1M, LFW and IJB-C. Held-out identities start
at a family boundary, so no sibling of a training identity is ever tested. See docs/synthetic.md.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from insightface_adadistill.data.bins import write_bin
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.data.rec_tools import write_insightface_rec
from insightface_adadistill.evaluation.ijb_meta import write_meta
from insightface_adadistill.synthetic.identities import SyntheticFaceConfig, derive_seeds
from insightface_adadistill.synthetic.renderer import SyntheticFaces

_PURPOSE_TRAIN, _PURPOSE_BIN, _PURPOSE_IJB = 1, 2, 3
_RENDER_BATCH = 256
_HARD_IMPOSTOR_FRACTION = 0.25


def _batches(total: int, what: str) -> Iterator[slice]:
    """Slices of `_RENDER_BATCH` items over range(total); a tqdm bar when stderr is a terminal."""
    with tqdm(total=total, desc=what, unit="img", disable=not sys.stderr.isatty()) as bar:
        for start in range(0, total, _RENDER_BATCH):
            batch = slice(start, min(start + _RENDER_BATCH, total))
            yield batch
            bar.update(batch.stop - batch.start)


def _render_jpegs(faces: SyntheticFaces, ids: np.ndarray, seeds: np.ndarray, quality: int,
                  what: str) -> Iterator[bytes]:
    """Aligned renders of (ids, seeds) (N,) as JPEG bytes, streamed batch by batch."""
    for batch in _batches(len(ids), what):
        yield from (encode_jpeg(image, quality) for image in faces.render_aligned(ids[batch], seeds[batch]))


def _identity_array(identity_ids: Iterable[int], what: str) -> np.ndarray:
    ids = np.asarray(list(identity_ids) if not isinstance(identity_ids, np.ndarray) else identity_ids)
    if ids.ndim != 1 or not len(ids) or ids.dtype.kind not in "iu" or ids.min() < 0:
        raise ValueError(f"{what}: identity_ids must be a non-empty 1-D sequence of non-negative "
                         f"integers, got {ids.dtype} with shape {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{what}: identity_ids repeat an identity; pass each identity once")
    return ids.astype(np.int64)


def write_training_rec(out_dir: str | os.PathLike, faces: SyntheticFaces, identity_ids: Iterable[int],
                       images_per_identity: int, seed: int, *, quality: int = 95) -> Dict[str, int]:
    """Write `images_per_identity` aligned faces of each identity as an InsightFace `.rec`.

    Class label j is `identity_ids[j]`. Returns dict(num_classes, num_images).
    """
    ids = _identity_array(identity_ids, "write_training_rec")
    if images_per_identity < 1:
        raise ValueError(f"write_training_rec: images_per_identity={images_per_identity} must be >= 1")
    labels = np.repeat(np.arange(len(ids)), images_per_identity)  # grouped by label, as the .rec needs
    index = np.tile(np.arange(images_per_identity), len(ids))
    seeds = derive_seeds(seed, _PURPOSE_TRAIN, ids[labels], index)
    jpegs = _render_jpegs(faces, ids[labels], seeds, quality, "train.rec")
    summary = write_insightface_rec(out_dir, zip(labels.tolist(), jpegs), num_classes=len(ids))
    return {"num_classes": summary.num_classes, "num_images": summary.num_images}


def _sibling_or_random(rng: np.random.Generator, ids: np.ndarray, first: np.ndarray,
                       family_size: int, hard: np.ndarray) -> np.ndarray:
    """A different identity for each `first`: a sibling where `hard` and one exists, else random."""
    other = first.copy()
    for i, a in enumerate(first):
        siblings = ids[(ids // family_size == a // family_size) & (ids != a)]
        pool = siblings if hard[i] and len(siblings) else ids[ids != a]
        other[i] = rng.choice(pool)
    return other


def write_verification_bin(path: str | os.PathLike, faces: SyntheticFaces, identity_ids: Iterable[int],
                           num_pairs: int, seed: int, *, quality: int = 95) -> Dict[str, int]:
    """Write `num_pairs` pairs of aligned held-out faces (pair i = images 2i and 2i+1) as an
    InsightFace `.bin` through `data.bins.write_bin`."""
    ids = _identity_array(identity_ids, "write_verification_bin")
    if num_pairs < 2 or len(ids) < 2:
        raise ValueError(f"write_verification_bin: need num_pairs >= 2 (got {num_pairs}) and >= 2 "
                         f"identities (got {len(ids)})")
    rng = np.random.default_rng([seed, _PURPOSE_BIN])
    issame = rng.permutation(np.arange(num_pairs) < num_pairs // 2)  # shuffled: every fold gets both
    first = rng.choice(ids, num_pairs)
    hard = rng.random(num_pairs) < _HARD_IMPOSTOR_FRACTION
    second = np.where(issame, first, _sibling_or_random(rng, ids, first, faces.config.family_size, hard))
    pair_ids = np.stack([first, second], 1).reshape(-1)  # (2P,) left, right, left, right, ...
    seeds = derive_seeds(seed, _PURPOSE_BIN, pair_ids, np.arange(2 * num_pairs))
    write_bin(path, list(_render_jpegs(faces, pair_ids, seeds, quality, "verification pairs")), issame.tolist())
    return {"num_pairs": num_pairs, "num_genuine": int(issame.sum())}


def _template_pairs(identity_of_template: np.ndarray, max_impostor_pairs: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(M, 3) rows (tid1, tid2, label) over 1-based template ids: every genuine pair, then up to
    `max_impostor_pairs` impostor pairs (all of them when they fit, else a uniform sample)."""
    tids = np.arange(1, len(identity_of_template) + 1)
    genuine = [(a, b) for ident in np.unique(identity_of_template)
               for a, b in combinations(tids[identity_of_template == ident], 2)]
    first, second = np.triu_indices(len(tids), k=1)
    impostor = identity_of_template[first] != identity_of_template[second]
    first, second = tids[first[impostor]], tids[second[impostor]]
    if len(first) > max_impostor_pairs:
        keep = np.sort(rng.choice(len(first), max_impostor_pairs, replace=False))
        first, second = first[keep], second[keep]
    rows = [np.array(genuine, np.int64).reshape(-1, 2), np.stack([first, second], 1)]
    labels = [np.ones(len(rows[0]), np.int64), np.zeros(len(rows[1]), np.int64)]
    return np.concatenate([np.concatenate(rows), np.concatenate(labels)[:, None]], 1)


def write_ijb_folder(root: str | os.PathLike, faces: SyntheticFaces, identity_ids: Iterable[int], *,
                     target: str = "IJBC", templates_per_identity: int = 2, media_per_template: int = 2,
                     images_per_media: int = 2, max_impostor_pairs: int = 100_000, seed: int = 0,
                     quality: int = 90) -> Dict[str, int]:
    """Write an IJB-layout folder: `root/loose_crop/<n>.jpg` and `root/meta/<t>_*.txt`.

    Image n (1-based, `<n>.jpg`) belongs to template `tid` (1-based) and media `mid` (10001-based,
    unique per media); both image meta files list the images in that order. Returns the counts:
    num_images, num_templates, num_genuine, num_impostor.
    """
    if target not in ("IJBC", "IJBB"):
        raise ValueError(f"write_ijb_folder: target={target!r} must be 'IJBC' or 'IJBB'")
    ids = _identity_array(identity_ids, "write_ijb_folder")
    counts = dict(templates_per_identity=templates_per_identity, media_per_template=media_per_template,
                  images_per_media=images_per_media)
    if min(counts.values()) < 1 or templates_per_identity < 2 or len(ids) < 2:
        raise ValueError(f"write_ijb_folder: {counts} must be >= 1 with >= 2 templates per identity "
                         f"and >= 2 identities (got {len(ids)}), so genuine and impostor pairs exist")
    n_templates = len(ids) * templates_per_identity
    identity_of_template = np.repeat(ids, templates_per_identity)  # (T,)
    template_of_image = np.repeat(np.arange(1, n_templates + 1), media_per_template * images_per_media)
    media_of_image = 10000 + np.repeat(np.arange(1, n_templates * media_per_template + 1), images_per_media)
    image_ids = identity_of_template[template_of_image - 1]  # (N,)
    seeds = derive_seeds(seed, _PURPOSE_IJB, image_ids, np.arange(len(image_ids)))
    image_dir = Path(root) / "loose_crop"
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{n}.jpg" for n in range(1, len(image_ids) + 1)]
    landmarks, faceness = [], []  # (N, 5, 2) and (N,) float32 in image order, batch by batch
    for batch in _batches(len(image_ids), f"{target} loose crops"):
        images, points, scores = faces.render_unaligned(image_ids[batch], seeds[batch])
        for name, image in zip(names[batch], images):
            (image_dir / name).write_bytes(encode_jpeg(image, quality))
        landmarks.append(points)
        faceness.append(scores)
    pairs = _template_pairs(identity_of_template, max_impostor_pairs, np.random.default_rng([seed, _PURPOSE_IJB]))
    write_meta(root, target, image_names=names, templates=template_of_image, medias=media_of_image,
               landmarks=np.concatenate(landmarks), faceness=np.concatenate(faceness), pairs=pairs[:, :2],
               labels=pairs[:, 2])
    num_genuine = int(pairs[:, 2].sum())
    return {"num_images": len(image_ids), "num_templates": n_templates, "num_genuine": num_genuine,
            "num_impostor": len(pairs) - num_genuine}


def heldout_start(num_train_ids: int, family_size: int) -> int:
    """First held-out identity: the next family boundary after the training identities."""
    return -(-num_train_ids // family_size) * family_size


def suite_paths(out_dir: str | os.PathLike, ijb_target: str = "IJBC") -> Dict[str, Path]:
    """Where `build_synthetic_suite` writes: rec (the folder), train_rec, synth_val, ijb (the IJB root)
    and manifest; a command checks them before it replaces a dataset."""
    out_dir = Path(out_dir)
    train_dir = out_dir / "train"
    return {"rec": train_dir, "train_rec": train_dir / "train.rec", "synth_val": train_dir / "synth_val.bin",
            "ijb": out_dir / ijb_target, "manifest": out_dir / "manifest.json"}


def build_synthetic_suite(out_dir: str | os.PathLike, num_train_ids: int = 200, images_per_id: int = 20,
                          num_heldout_ids: int = 100, seed: int = 0, *,
                          config: Optional[SyntheticFaceConfig] = None, num_val_pairs: int = 1000,
                          ijb_target: str = "IJBC", ijb_templates_per_identity: int = 3,
                          ijb_media_per_template: int = 2, ijb_images_per_media: int = 2,
                          ) -> Dict[str, str]:
    """Write train.rec + synth_val.bin (in `out_dir/train`), an IJB folder and `manifest.json`.

    Training identities are 0..num_train_ids-1; held-out ones start at the next family boundary and
    feed both the `.bin` and the IJB folder. Point the config at `rec = out_dir/train` with
    `val_targets = ['synth_val']`, and IJB evaluation at `--image-path out_dir/<ijb_target>`.
    Returns `suite_paths` as strings.
    """
    config = config or SyntheticFaceConfig()
    faces = SyntheticFaces(config, seed)
    where = suite_paths(out_dir, ijb_target)
    start = heldout_start(num_train_ids, config.family_size)
    heldout_ids = range(start, start + num_heldout_ids)
    written = {
        "train": write_training_rec(where["rec"], faces, range(num_train_ids), images_per_id, seed),
        "synth_val": write_verification_bin(where["synth_val"], faces, heldout_ids, num_val_pairs, seed),
        ijb_target: write_ijb_folder(where["ijb"], faces, heldout_ids, target=ijb_target, seed=seed,
                                     templates_per_identity=ijb_templates_per_identity,
                                     media_per_template=ijb_media_per_template,
                                     images_per_media=ijb_images_per_media),
    }
    paths = {name: str(path) for name, path in where.items()}
    manifest = {"generator": "insightface_adadistill.synthetic", "seed": seed,
                "config": asdict(config), "train_identities": [0, num_train_ids],
                "heldout_identities": [start, start + num_heldout_ids], "ijb_target": ijb_target,
                "written": written, "paths": {k: os.path.relpath(v, out_dir) for k, v in paths.items()}}
    where["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    return paths
