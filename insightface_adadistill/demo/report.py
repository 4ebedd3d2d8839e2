"""The demo's outputs: the results table, the alpha/lambda curves, the ROC plot and report.md.

Curves are read back from the AdaDistill run's TensorBoard events (the tags the trainer writes,
e.g. `distill/alpha`), so the plot shows exactly what `tensorboard --logdir` shows.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

Curve = Tuple[np.ndarray, np.ndarray]

# tag -> legend label: the paper's symbols
DISTILL_CURVES = {
    "distill/alpha": "α = cos(student, teacher)  (Eq. 7)",
    "distill/alpha_weighted": "α′ = α · λ  (Eq. 8)",
    "distill/centre_teacher_cos": "λ = cos(centre, teacher)",
}
LR_TAG = "learning_rate"


def read_scalars(tensorboard_dir: Path, tags: Sequence[str]) -> Dict[str, Curve]:
    """{tag: (steps (K,), values (K,))} of the scalar tags present in a run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})  # 0: keep all
    quiet = logging.getLogger("tensorboard")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "No path found after <event file>" info is not news
    try:
        events.Reload()
    finally:
        quiet.setLevel(level)
    present = set(events.Tags().get("scalars", []))
    points = {tag: events.Scalars(tag) for tag in tags if tag in present}
    return {tag: (np.array([p.step for p in ps]), np.array([p.value for p in ps])) for tag, ps in points.items()}


def _axes():
    """The axes of a Figure on the Agg canvas (no global backend switch, works without a display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def _save(ax, title: str, path: Path) -> None:
    """The finish both plots share: a [0, 1] y axis, title, grid, legend, tight layout, PNG."""
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.grid(ls="--", lw=0.5)
    ax.legend(loc="lower right")
    ax.figure.tight_layout()
    ax.figure.savefig(path)


def plot_distill_curves(curves: Mapping[str, Curve], path: Path, title: str) -> None:
    """α, α′ and λ over the training steps, with the lr drops as dotted lines."""
    ax = _axes()
    for tag, label in DISTILL_CURVES.items():
        if tag in curves:
            ax.plot(*curves[tag], lw=1.5, label=label)
    if LR_TAG in curves:
        steps, lr = curves[LR_TAG]
        for step in steps[1:][np.diff(lr) < 0]:
            ax.axvline(step, color="grey", ls=":", lw=1)
    ax.set_xlabel("training step (dotted: lr / 10)")
    ax.set_ylabel("batch mean")
    _save(ax, title, path)


def plot_roc_curves(curves: Mapping[str, Curve], path: Path, num_impostor: int, lowest_far: float,
                    title: str) -> None:
    """TAR against FAR on a log axis from one impostor pair (1 / num_impostor) up to 1; FARs
    below `lowest_far` (too few false accepts to be trusted) are shaded."""
    ax = _axes()
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, lw=1.5, label=label)
    low = 10 ** math.floor(math.log10(1.0 / max(num_impostor, 1)))
    ax.axvspan(low, lowest_far, color="grey", alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlim(low, 1.0)
    ax.set_xlabel(f"FAR ({num_impostor} impostor pairs; shaded: too few false accepts to report)")
    ax.set_ylabel("TAR")
    _save(ax, title, path)


def far_label(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")


def results_table(rows: Sequence[Mapping[str, Any]], fars: Sequence[float], target: str) -> str:
    """Markdown table: model, network, parameters, verification accuracy ± std (10 folds),
    TAR (%) at each FAR, ROC AUC (%) and training time."""
    header = (["model", "network", "params", "synth_val accuracy (%)"]
              + [f"{target} TAR@FAR={far_label(f)} (%)" for f in fars] + ["AUC (%)", "train time"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], f"`{row['network']}`", f"{row['params']:,}",
                 f"{100 * row['accuracy']:.2f} ± {100 * row['std']:.2f}"]
        cells += [f"{100 * row['tar_at_far'][f]:.2f}" for f in fars]
        cells += [f"{100 * row['auc']:.2f}", f"{row['seconds']:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def json_ready(value: Any) -> Any:
    """Numbers, dicts and lists as JSON can hold them (numpy scalars -> Python, float keys -> str)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def final_means(curves: Mapping[str, Curve], tail: int = 5) -> Dict[str, float]:
    """Mean of the last `tail` logged values of each curve (the end-of-training level)."""
    return {tag: float(np.mean(values[-tail:])) for tag, (_, values) in curves.items() if len(values)}


def summary_lines(items: Mapping[str, str]) -> str:
    """A markdown bullet list, one `- name: text` line per item."""
    return "\n".join(f"- {name}: {text}" for name, text in items.items())
