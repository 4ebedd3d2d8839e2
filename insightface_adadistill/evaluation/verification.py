"""LFW-style 10-fold verification accuracy on `.bin` sets, as arcface_torch's `eval/verification.py`.

The protocol and where we differ from the host are in docs/evaluation.md; the steps below follow it
(XNorm over all raw embeddings, squared L2 distance of normalised orig + flip sums, contiguous folds,
the best train threshold of a fixed grid applied to the test fold).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from insightface_adadistill.backbones.loading import unwrap
from insightface_adadistill.data.bins import decode_bin, load_bin
from insightface_adadistill.errors import DataError

THRESHOLDS = np.arange(0, 4, 0.01)  # the host's grid, same float values
N_FOLDS = 10


@dataclasses.dataclass(frozen=True)
class VerificationSet:
    """One decoded verification set: `name` (the file stem: lfw, cfp_fp, agedb_30, ...), `images`
    (2P, 3, H, W) uint8 RGB, where pair i is rows 2i and 2i+1, and `issame` (P,) bool."""

    name: str
    images: Tensor
    issame: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 (2P, 3, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.issame.ndim != 1 or self.images.shape[0] != 2 * self.issame.shape[0]:
            raise ValueError(f"{self.name}: {self.images.shape[0]} images for {self.issame.shape} "
                             "issame flags; a set holds 2 images per pair")

    @classmethod
    def load(cls, path: str | os.PathLike, image_size: int = 112) -> "VerificationSet":
        """Read and decode a `.bin` file; the set is named after the file stem."""
        images, issame = load_bin(path)
        return cls(Path(path).stem, decode_bin(images, image_size, source=str(path)),
                   np.asarray(issame, dtype=bool))


def pixels_to_input(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W) network input, as arcface_torch trains.

    Written (p / 255 - 0.5) / 0.5 as the host's eval scripts do, so inputs match them to the bit;
    it is the (p - 127.5) / 127.5 of every registered `BackboneSpec`.
    """
    return (images.float() / 255 - 0.5) / 0.5


def embed_images(backbone: nn.Module, images: Tensor, batch_size: int = 64,
                 device: Optional[torch.device] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Raw embeddings (orig, flip), each (N, D) float64, of (N, 3, H, W) uint8 RGB `images`.

    `backbone` may be DDP-wrapped; it runs in eval mode under no_grad (its mode is restored after) on
    `device`, by default its parameters' device.
    """
    model = unwrap(backbone)
    if device is None:  # a parameterless model runs on the CPU
        device = next(model.parameters(), torch.empty(0)).device
    orig, flip = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = pixels_to_input(images[start:start + batch_size].to(device))
                orig.append(model(x).double().cpu())
                flip.append(model(torch.flip(x, dims=[3])).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(orig).numpy(), torch.cat(flip).numpy()


def kfold_splits(n: int, n_folds: int = N_FOLDS) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of `n` items in contiguous folds, as sklearn `KFold(n_folds)`.

    The first `n % n_folds` folds hold one extra item (as `np.array_split`).
    """
    if n < n_folds:
        raise DataError(f"{n} pairs cannot be split into {n_folds} folds; use a set with at least "
                         f"{n_folds} pairs")
    indices = np.arange(n)
    return [(np.setdiff1d(indices, test), test) for test in np.array_split(indices, n_folds)]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of (N, D); all-zero rows stay zero (as sklearn's `normalize`)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """(2P, D) embeddings -> (P,) squared L2 distances of rows (0::2, 1::2) after normalisation."""
    normed = l2_normalize(embeddings)
    diff = normed[0::2] - normed[1::2]  # (P, D)
    return np.sum(diff * diff, axis=1)


def kfold_accuracy(distances: np.ndarray, issame: np.ndarray, n_folds: int = N_FOLDS,
                   thresholds: np.ndarray = THRESHOLDS) -> Tuple[np.ndarray, np.ndarray]:
    """Test accuracy and chosen threshold per fold: (n_folds,), (n_folds,).

    Each fold's threshold is the first one maximising the train-fold accuracy of "same iff
    distance < threshold".
    """
    accuracies, chosen = [], []
    for train, test in kfold_splits(len(distances), n_folds):
        predicted = distances[train][None, :] < thresholds[:, None]  # (T, P_train)
        best = thresholds[int(np.argmax(np.mean(predicted == issame[train][None, :], axis=1)))]
        chosen.append(best)
        accuracies.append(np.mean((distances[test] < best) == issame[test]))
    return np.asarray(accuracies), np.asarray(chosen)


def evaluate_embeddings(orig: np.ndarray, flip: np.ndarray, issame: np.ndarray,
                        n_folds: int = N_FOLDS) -> Dict[str, float]:
    """Spec 6.1 on precomputed raw embeddings (2P, D) of the original and flipped faces.

    Returns:
        accuracy (mean over folds), std (population std over folds), xnorm (mean raw L2 norm over
        both sets) and threshold (mean of the per-fold thresholds, for information).
    """
    xnorm = float(np.mean(np.linalg.norm(np.concatenate([orig, flip]), axis=1)))
    distances = pair_distances(orig + flip)
    accuracies, chosen = kfold_accuracy(distances, np.asarray(issame, dtype=bool), n_folds)
    return {"accuracy": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
            "xnorm": xnorm, "threshold": float(np.mean(chosen))}


def evaluate_backbone(backbone: nn.Module, vset: VerificationSet, batch_size: int = 64,
                      device: Optional[torch.device] = None) -> Dict[str, float]:
    """Embed `vset` with `backbone` (eval mode, no_grad, mode restored) and score it (module doc)."""
    orig, flip = embed_images(backbone, vset.images, batch_size, device)
    return evaluate_embeddings(orig, flip, vset.issame)


