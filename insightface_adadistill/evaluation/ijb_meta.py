"""The IJB-B / IJB-C meta files: one module that reads and writes their layout.

An IJB root holds `loose_crop/<image>` and three text files in `meta/` (`<t>` = ijbc or ijbb):

    <t>_face_tid_mid.txt          image_name template_id media_id        (one line per image)
    <t>_name_5pts_score.txt       image_name x1 y1 ... x5 y5 faceness     (same images, same order)
    <t>_template_pair_label.txt   template_id_1 template_id_2 label       (1 genuine, 0 impostor)

as in the IJB release that arcface_torch's `eval_ijbc.py` reads; the two image files are matched row
by row. `read_meta` checks every line and names the file, the line and the fix; `write_meta` writes
the same layout (the synthetic IJB folders). See docs/evaluation.md.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from insightface_adadistill.errors import DataError

TARGETS = ("IJBC", "IJBB")
# kind -> (file name suffix, the fields of one line)
_FILES = {
    "tid_mid": ("face_tid_mid", "image_name template_id media_id"),
    "pairs": ("template_pair_label", "template_id_1 template_id_2 label"),
    "landmarks": ("name_5pts_score", "image_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness_score"),
}


class IJBDataError(DataError):
    """The IJB folder or one of its meta files does not have the layout of docs/evaluation.md."""


@dataclasses.dataclass(frozen=True)
class IJBMeta:
    """The IJB meta files; row i of the image arrays is line i+1 of both image meta files.

    Attributes:
        image_dir: the `loose_crop` folder.
        image_names: (N,) file names inside `image_dir`.
        templates, medias: (N,) int64 template and media id of each image.
        landmarks: (N, 5, 2) float32 pixel (x, y): eyes, nose, mouth corners.
        faceness: (N,) float32 detector score.
        pairs: (M, 2) int64 template ids; labels: (M,) int64, 1 = genuine.
    """

    image_dir: Path
    image_names: List[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    faceness: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray


def meta_files(image_root: Path, target: str) -> Dict[str, Path]:
    """The three meta files of `target` ('IJBC' or 'IJBB') under `image_root`."""
    if target not in TARGETS:
        raise IJBDataError(f"target {target!r} is not one of {TARGETS}")
    meta = Path(image_root) / "meta"
    return {kind: meta / f"{target.lower()}_{suffix}.txt" for kind, (suffix, _) in _FILES.items()}


def _read_table(path: Path, kind: str, first: int, dtype: type) -> Tuple[List[str], np.ndarray]:
    """Column 0 of every line, and columns `first:` as `dtype` (row i = line i+1).

    Every line is first checked for the field count of its layout, then for its values; the first
    bad line is reported with its number and the layout.
    """
    layout = _FILES[kind][1]
    lines = path.read_text().strip().splitlines()
    fields = [line.split() for line in lines]
    for lineno, row in enumerate(fields, start=1):
        if len(row) != len(layout.split()):
            raise IJBDataError(f"{path}:{lineno}: expected {len(layout.split())} fields '{layout}', got "
                               f"{lines[lineno - 1]!r}")
    values = []
    for lineno, row in enumerate(fields, start=1):
        try:
            values.append([dtype(v) for v in row[first:]])
        except ValueError as exc:
            raise IJBDataError(f"{path}:{lineno}: {exc}; the line must read '{layout}'") from exc
    return [row[0] for row in fields], np.array(values)


def _read_pairs(path: Path) -> np.ndarray:
    """(M, 3) int64 rows `tid1 tid2 label`; numpy parses the ~16M lines, Python locates errors."""
    body = path.read_text().strip()
    n_lines = body.count("\n") + 1 if body else 0
    try:
        values = np.fromstring(body, dtype=np.int64, sep=" ")
    except ValueError:
        values = None
    if values is None or values.size != 3 * n_lines:
        values = _read_table(path, "pairs", 0, int)[1]  # raises on the first malformed line
    rows = values.reshape(-1, 3)  # (M, 3)
    bad = np.flatnonzero(~np.isin(rows[:, 2], (0, 1)))
    if bad.size:
        raise IJBDataError(f"{path}:{bad[0] + 1}: label {rows[bad[0], 2]} is not 0 (impostor) or "
                           f"1 (genuine); the line must read '{_FILES['pairs'][1]}'")
    return rows


def _require_files(paths: Dict[str, Path], image_dir: Path) -> None:
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise IJBDataError(f"missing IJB meta file(s): {', '.join(missing)}. --image-path must be the "
                           "IJB root holding meta/ and loose_crop/ (e.g. IJB_release/IJBC), and "
                           "--target must name the set (IJBC or IJBB)")
    if not image_dir.is_dir():
        raise IJBDataError(f"{image_dir}: image folder not found; --image-path must hold loose_crop/")


def _check_rows_match(files: Dict[str, Path], names: List[str], lmk_names: List[str]) -> None:
    """The landmark file is aligned with the tid_mid file by row index (as the host reads them)."""
    if len(names) != len(lmk_names):
        raise IJBDataError(f"{files['landmarks']} has {len(lmk_names)} lines but {files['tid_mid']} "
                           f"has {len(names)}; both list the same images in the same order")
    for lineno, (name, lmk_name) in enumerate(zip(names, lmk_names), start=1):
        if name != lmk_name:
            raise IJBDataError(f"{files['landmarks']}:{lineno}: image {lmk_name!r}, but line {lineno} "
                               f"of {files['tid_mid']} is {name!r}; the files are matched row by row, "
                               "so both must list the images in the same order")


def _check_pair_templates(path: Path, pairs: np.ndarray, templates: np.ndarray) -> None:
    known = np.isin(pairs, np.unique(templates))  # (M, 2)
    bad = np.flatnonzero(~known.all(axis=1))
    if bad.size:
        tid = pairs[bad[0]][~known[bad[0]]][0]
        raise IJBDataError(f"{path}:{bad[0] + 1}: template {tid} has no image in the tid_mid file "
                           f"({bad.size} pairs affected); use the pair file of the same IJB release")


def _check_images(image_dir: Path, names: List[str], listing_file: Path) -> None:
    """Fail before any embedding if a listed image is absent (one directory listing, not N stats)."""
    present = set(os.listdir(image_dir))
    missing = [(i, n) for i, n in enumerate(names)
               if n not in present and not (os.sep in n and (image_dir / n).is_file())]
    if missing:
        lineno, name = missing[0][0] + 1, missing[0][1]
        raise IJBDataError(f"{len(missing)} image(s) listed in {listing_file} are missing from "
                           f"{image_dir}, first {name!r} (line {lineno}); download the complete "
                           "loose_crop folder")


def read_meta(image_root: str | os.PathLike, target: str) -> IJBMeta:
    """Read and cross-check the meta files of `target` under `image_root`."""
    files = meta_files(Path(image_root), target)
    image_dir = Path(image_root) / "loose_crop"
    _require_files(files, image_dir)
    names, ids = _read_table(files["tid_mid"], "tid_mid", 1, int)
    if not names:
        raise IJBDataError(f"{files['tid_mid']} lists no images")
    templates, medias = ids[:, 0].astype(np.int64), ids[:, 1].astype(np.int64)
    lmk_names, values = _read_table(files["landmarks"], "landmarks", 1, float)
    _check_rows_match(files, names, lmk_names)
    landmarks, faceness = values[:, :10].reshape(-1, 5, 2).astype(np.float32), values[:, 10].astype(np.float32)
    rows = _read_pairs(files["pairs"])
    if not len(rows):
        raise IJBDataError(f"{files['pairs']} lists no template pairs")
    _check_pair_templates(files["pairs"], rows[:, :2], templates)
    _check_images(image_dir, names, files["tid_mid"])
    return IJBMeta(image_dir, names, templates, medias, landmarks, faceness,
                   np.ascontiguousarray(rows[:, :2]), rows[:, 2].copy())


def write_meta(image_root: str | os.PathLike, target: str, *, image_names: Sequence[str],
               templates: np.ndarray, medias: np.ndarray, landmarks: np.ndarray, faceness: np.ndarray,
               pairs: np.ndarray, labels: np.ndarray) -> Dict[str, Path]:
    """Write the three meta files of `target` under `image_root/meta`; returns them by kind.

    Args:
        image_names: (N,) names inside `loose_crop/`; templates, medias: (N,) integer ids.
        landmarks: (N, 5, 2) pixel (x, y) and faceness: (N,), written with 3 decimals.
        pairs: (M, 2) template ids; labels: (M,) 1 genuine, 0 impostor.
    """
    files = meta_files(Path(image_root), target)
    landmarks = np.asarray(landmarks).reshape(len(image_names), 10)  # (N, 10) x1 y1 ... x5 y5
    files["tid_mid"].parent.mkdir(parents=True, exist_ok=True)
    files["tid_mid"].write_text("".join(
        f"{name} {tid} {mid}\n" for name, tid, mid in zip(image_names, templates, medias)))
    files["landmarks"].write_text("".join(
        " ".join([name, *(f"{v:.3f}" for v in points), f"{score:.3f}"]) + "\n"
        for name, points, score in zip(image_names, landmarks, faceness)))
    files["pairs"].write_text("".join(
        f"{a} {b} {label}\n" for (a, b), label in zip(pairs, labels)))
    return files
