"""ROC curve, TAR@FAR by the arcface_torch rule, the TAR@FAR table and the ROC plot.

`roc_curve` reproduces `sklearn.metrics.roc_curve(labels, scores)` (default
`drop_intermediate=True`) in numpy, so evaluation needs no scikit-learn; tests compare the two.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

REPORT_FARS: Tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), (K,) each, over the distinct values of the (M,) similarity `scores` for
    (M,) `labels` (1 = genuine, 0 = impostor, bool or int), as sklearn's `roc_curve`.

    A pair is accepted when score >= threshold; fpr and tpr are non-decreasing. Collinear intermediate
    points are dropped (sklearn's `drop_intermediate=True`) and (0, 0) is prepended with threshold +inf.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of one length")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"labels must be 0/1, got values {np.unique(labels)[:10].tolist()}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{np.count_nonzero(~np.isfinite(scores))} scores are NaN or infinite")
    positives = int(np.count_nonzero(labels))
    if positives == 0 or positives == labels.size:
        raise ValueError("an ROC curve needs both genuine (1) and impostor (0) pairs; got "
                         f"{positives} genuine of {labels.size}")
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.float64)
    # the last index of each run of equal scores: one ROC point per distinct threshold
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tps = np.cumsum(sorted_labels)[ends]
    fps = 1.0 + ends - tps
    thresholds = sorted_scores[ends]
    if fps.size > 2:  # keep corners only: a point collinear with its neighbours adds nothing
        corners = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[corners], tps[corners], thresholds[corners]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds.astype(np.float64)]
    return fps / fps[-1], tps / tps[-1], thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the curve by the trapezoidal rule (sklearn's `auc` on a monotone curve)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tar_at_fars(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = REPORT_FARS
                ) -> Dict[float, float]:
    """TAR at each FAR as `eval_ijbc.py` does: the nearest ROC point, not interpolated.

    The curve is reversed and the first point with the smallest |fpr - far| wins, so among equally
    near points the one with the highest TPR is taken.
    """
    fpr_rev, tpr_rev = fpr[::-1], tpr[::-1]
    return {far: float(tpr_rev[int(np.argmin(np.abs(fpr_rev - far)))]) for far in fars}


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = REPORT_FARS
               ) -> Dict[float, float]:
    """TAR (fraction) at each FAR for 0/1 `labels` (M,) and similarity `scores` (M,)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return tar_at_fars(fpr, tpr, fars)


def format_tar_table(rows: Mapping[str, Mapping[float, float]],
                     fars: Sequence[float] = REPORT_FARS) -> str:
    """A PrettyTable-style text table: `Methods | 1e-06 | ... | 0.1`, TAR x100 with 2 decimals."""
    header = ["Methods"] + [str(far) for far in fars]  # '1e-06', ..., '0.0001', as the host
    body = [[name] + [f"{row[far] * 100:.2f}" for far in fars] for name, row in rows.items()]
    widths = [max(len(line[col]) for line in [header] + body) + 2 for col in range(len(header))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"

    def line(cells: List[str]) -> str:
        return "|" + "|".join(cell.center(w) for cell, w in zip(cells, widths)) + "|"

    return "\n".join([rule, line(header), rule, *(line(cells) for cells in body), rule])


def plot_roc(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], paths: Sequence[Path],
             title: str = "ROC on IJB") -> None:
    """Save the host's ROC figure (log-x 1e-6..0.1, y 0.3..1, AUC in the legend) to each path.

    Uses matplotlib's object API with the Agg canvas, so no global backend is switched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, lw=1, label=f"[{name} (AUC = {auc(fpr, tpr) * 100:.4f} %)]")
    ax.set_xlim(1e-6, 0.1)
    ax.set_ylim(0.3, 1.0)
    ax.grid(linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(list(REPORT_FARS))
    ax.set_yticks(np.linspace(0.3, 1.0, 8, endpoint=True))
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    for path in paths:
        fig.savefig(path)
