"""IJB-B / IJB-C 1:1 template verification, as arcface_torch's `eval_ijbc.py`.

Pipeline: read the three meta files (`ijb_meta`) -> align every loose crop to the ArcFace template
(BGR read, warp, BGR->RGB) in DataLoader workers -> embed the face and its horizontal flip -> combine
per image (the N/D/F switches) -> media pooling inside templates -> template = L2-normalised sum of
media features -> cosine score per pair -> ROC and TAR@FAR by the nearest-point rule. The protocol,
its switches and where we differ from the host are in docs/evaluation.md.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from insightface_adadistill.backbones.loading import unwrap
from insightface_adadistill.errors import InputNotFoundError, WeightsError
from insightface_adadistill.evaluation.alignment import ALIGNED_SIZE, align_face
from insightface_adadistill.evaluation.ijb_meta import IJBDataError, IJBMeta, read_meta
from insightface_adadistill.evaluation.roc import (REPORT_FARS, auc, format_tar_table, plot_roc,
                                                   roc_curve, tar_at_far, tar_at_fars)
from insightface_adadistill.evaluation.verification import l2_normalize, pixels_to_input

__all__ = ["IJBDataError", "IJBMeta", "read_meta", "AlignedFaces", "embed_faces", "image_features",
           "pool_templates", "pair_scores", "tar_at_far", "evaluate_ijb", "write_results",
           "backbone_embedder", "onnx_embedder"]

PAIR_CHUNK = 100_000  # pairs scored at once, as the host (bounds memory to ~2 x 100k x D floats)

EmbedFn = Callable[[Tensor], np.ndarray]
"""(B, 3, 112, 112) float32 CPU network input -> (B, D) raw embeddings."""


class AlignedFaces(Dataset):
    """Item i: image i read with OpenCV (BGR), aligned, as RGB uint8 (3, 112, 112)."""

    def __init__(self, paths: Sequence[str | os.PathLike], landmarks: np.ndarray) -> None:
        if len(paths) != len(landmarks):
            raise ValueError(f"{len(paths)} images but {len(landmarks)} landmark rows")
        self.paths = [str(p) for p in paths]
        self.landmarks = np.asarray(landmarks, dtype=np.float32)  # (N, 5, 2)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        path = self.paths[index]
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise IJBDataError(f"{path}: OpenCV cannot read this image (missing or corrupt); "
                               "re-download it")
        try:
            aligned = align_face(bgr, self.landmarks[index])  # (112, 112, 3) BGR
        except ValueError as exc:
            raise IJBDataError(f"{path}: {exc}") from exc
        rgb = cv2.cvtColor(aligned, cv2.COLOR_BGR2RGB)
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (3, 112, 112)


def _single_threaded_opencv(_worker_id: int) -> None:
    cv2.setNumThreads(1)  # each worker is one process already: don't oversubscribe the cores


def embed_faces(embed_fn: EmbedFn, faces: Dataset, batch_size: int = 128, workers: int = 4,
                flip: bool = True, progress: Optional[bool] = None
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Raw float32 embeddings (N, D) of the faces and, with `flip`, of their mirror images.

    Each batch of B faces goes to `embed_fn` as one (2B, 3, 112, 112) input (orig then flip),
    as in the host. `progress=None` shows a tqdm bar only when stderr is a terminal. With
    `workers > 0` the workers are spawned, so a calling script needs `if __name__ == "__main__":`.
    """
    from tqdm import tqdm

    # Workers are spawned, not forked: a fork copies OpenCV's thread pool without its threads, and
    # the child then hangs in its first parallel OpenCV call (seen with cv2 5.0, pthreads backend).
    loader = DataLoader(faces, batch_size=batch_size, shuffle=False, num_workers=workers,
                        worker_init_fn=_single_threaded_opencv if workers else None,
                        multiprocessing_context="spawn" if workers else None)
    show = sys.stderr.isatty() if progress is None else progress
    orig: List[np.ndarray] = []
    mirrored: List[np.ndarray] = []
    for batch in tqdm(loader, desc="embedding", unit="batch", disable=not show):
        x = pixels_to_input(batch)  # (B, 3, 112, 112)
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])  # (2B, 3, 112, 112)
        emb = np.asarray(embed_fn(x), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != x.shape[0]:
            raise ValueError(f"the model returned shape {emb.shape} for {x.shape[0]} faces; "
                             "expected (batch, embedding_size)")
        orig.append(emb[: batch.shape[0]])
        mirrored.append(emb[batch.shape[0]:])
    return np.concatenate(orig), (np.concatenate(mirrored) if flip else None)


def image_features(orig: np.ndarray, flipped: Optional[np.ndarray], faceness: np.ndarray,
                   norm_score: bool = True, detector_score: bool = True) -> np.ndarray:
    """Per-image features before pooling, (N, D) (step 3 of the protocol in docs/evaluation.md).

    F1 (`flipped` given): orig + flip, F0: orig. N1 (`norm_score`): keep the embedding norm as a
    quality weight, N0: L2-normalise each image. D1 (`detector_score`): multiply by faceness.
    """
    feats = orig if flipped is None else orig + flipped
    if not norm_score:
        feats = l2_normalize(feats)
    if detector_score:
        feats = feats * np.asarray(faceness, dtype=feats.dtype)[:, None]
    return feats


def pool_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(N, D) per-image features with (N,) template and media ids -> the (T,) sorted template ids and
    their (T, D) float64 L2-normalised features.

    As the host's `image2template_feature`: mean over the images of one media, sum over a template's media.
    """
    templates, medias = np.asarray(templates), np.asarray(medias)
    if not (len(features) == len(templates) == len(medias)):
        raise ValueError(f"{len(features)} features, {len(templates)} template ids and "
                         f"{len(medias)} media ids: one of each per image is needed")
    order = np.lexsort((medias, templates))  # by template, then media
    tids, mids = templates[order], medias[order]
    media_starts = np.flatnonzero(np.r_[True, (np.diff(tids) != 0) | (np.diff(mids) != 0)])
    media_sums = np.add.reduceat(features[order], media_starts, axis=0, dtype=np.float64)  # (G, D)
    media_sizes = np.diff(np.r_[media_starts, len(order)])
    media_feats = media_sums / media_sizes[:, None]  # (G, D)
    media_tids = tids[media_starts]
    template_starts = np.flatnonzero(np.r_[True, np.diff(media_tids) != 0])
    template_feats = np.add.reduceat(media_feats, template_starts, axis=0)  # (T, D)
    return media_tids[template_starts], l2_normalize(template_feats)


def pair_scores(unique_templates: np.ndarray, template_features: np.ndarray, pairs: np.ndarray
                ) -> np.ndarray:
    """Cosine similarity (M,) of template pairs (M, 2), computed `PAIR_CHUNK` pairs at a time."""
    rows = np.searchsorted(unique_templates, pairs)  # (M, 2)
    rows = np.minimum(rows, len(unique_templates) - 1)
    unknown = unique_templates[rows] != pairs
    if unknown.any():
        raise ValueError(f"templates {np.unique(pairs[unknown])[:10].tolist()} appear in pairs but "
                         "have no images")
    scores = np.empty(len(pairs))
    for start in range(0, len(pairs), PAIR_CHUNK):
        chunk = rows[start:start + PAIR_CHUNK]
        scores[start:start + len(chunk)] = np.einsum(
            "ij,ij->i", template_features[chunk[:, 0]], template_features[chunk[:, 1]])
    return scores


def evaluate_ijb(embed_fn: EmbedFn, image_root: str | os.PathLike, target: str = "IJBC", *,
                 batch_size: int = 128, workers: int = 4, flip: bool = True,
                 norm_score: bool = True, detector_score: bool = True,
                 progress: Optional[bool] = None) -> Dict[str, object]:
    """Run the whole IJB 1:1 protocol with `embed_fn`: a dict with target, mode (the paper's test-mode
    name, 'N1D1F1' for the host's setting), counts, scores (M,), labels (M,), fpr, tpr, auc and
    tar_at_far {far: tar fraction} at `REPORT_FARS`."""
    start = time.perf_counter()
    meta = read_meta(image_root, target)
    faces = AlignedFaces([meta.image_dir / n for n in meta.image_names], meta.landmarks)
    orig, flipped = embed_faces(embed_fn, faces, batch_size, workers, flip, progress)
    feats = image_features(orig, flipped, meta.faceness, norm_score, detector_score)
    unique_templates, template_feats = pool_templates(feats, meta.templates, meta.medias)
    scores = pair_scores(unique_templates, template_feats, meta.pairs)
    fpr, tpr, _ = roc_curve(meta.labels, scores)
    genuine = int(meta.labels.sum())
    return {"target": target, "mode": f"N{int(norm_score)}D{int(detector_score)}F{int(flip)}",
            "counts": {"images": len(meta.image_names), "templates": len(unique_templates),
                       "pairs": len(scores), "genuine": genuine, "impostor": len(scores) - genuine,
                       "embedding_size": int(orig.shape[1])},
            "scores": scores, "labels": meta.labels, "fpr": fpr, "tpr": tpr, "auc": auc(fpr, tpr),
            "tar_at_far": tar_at_fars(fpr, tpr), "seconds": time.perf_counter() - start}


def write_results(result: Dict[str, object], out_dir: str | os.PathLike, job: str,
                  extra: Optional[Dict[str, object]] = None) -> Dict[str, Path]:
    """Write `<t>.npy` (scores in pair-file order), `<t>.png`/`.pdf` (ROC), `<t>.txt` (table),
    `<t>.csv` and `<t>.json` into `out_dir`; returns {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = str(result["target"])
    stem = out_dir / target.lower()
    paths = {kind: stem.with_suffix(f".{kind}") for kind in ("npy", "png", "pdf", "txt", "csv", "json")}
    tar: Dict[float, float] = result["tar_at_far"]  # type: ignore[assignment]
    np.save(paths["npy"], result["scores"])
    plot_roc({job: (result["fpr"], result["tpr"])}, [paths["png"], paths["pdf"]])
    paths["txt"].write_text(format_tar_table({f"{job}-{target}": tar}) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "target", "mode", *map(str, REPORT_FARS), "auc"])
        writer.writerow([job, target, result["mode"], *(f"{tar[f]:.6f}" for f in REPORT_FARS),
                         f"{result['auc']:.6f}"])
    summary = {"job": job, "target": target, "mode": result["mode"], "counts": result["counts"],
               "tar_at_far": {str(f): tar[f] for f in REPORT_FARS}, "auc": result["auc"],
               "seconds": round(float(result["seconds"]), 1), **(extra or {}),
               "files": {k: p.name for k, p in paths.items()}}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def backbone_embedder(backbone: nn.Module, device: torch.device) -> EmbedFn:
    """An `EmbedFn` running `backbone` (set to eval mode) on `device` without gradients."""
    model = unwrap(backbone).eval().to(device)

    @torch.no_grad()
    def embed(x: Tensor) -> np.ndarray:
        return model(x.to(device, non_blocking=True)).float().cpu().numpy()

    return embed


def onnx_embedder(path: str | os.PathLike, device: torch.device) -> EmbedFn:
    """An `EmbedFn` running an ONNX model with onnxruntime (CUDA provider when `device` is CUDA).

    The model takes the same (p - 127.5) / 127.5 RGB input as the torch backbones (as `torch2onnx`
    exports do). A fixed batch dimension is served in chunks of that size, zero-padded at the end.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: ONNX model not found; check --onnx")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
        raise WeightsError(f"{path}: expected one (N, 3, 112, 112) input and one output, got inputs "
                         f"{[(i.name, i.shape) for i in inputs]} and {len(outputs)} outputs")
    name, (batch, _, height, width) = inputs[0].name, inputs[0].shape
    if any(isinstance(size, int) and size != ALIGNED_SIZE for size in (height, width)):
        raise WeightsError(f"{path}: input is {height}x{width}, the IJB protocol needs 112x112 faces")
    fixed = batch if isinstance(batch, int) and batch > 0 else None

    def embed(x: Tensor) -> np.ndarray:
        arr = x.numpy().astype(np.float32, copy=False)
        if fixed is None:
            return session.run(None, {name: arr})[0]
        padded = np.concatenate([arr, np.zeros((-len(arr) % fixed, *arr.shape[1:]), dtype=np.float32)])
        return np.concatenate([session.run(None, {name: padded[start:start + fixed]})[0]
                               for start in range(0, len(arr), fixed)])[: len(arr)]

    return embed
