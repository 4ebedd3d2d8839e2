"""The lines a `train` run ends with: how long it took, how far the loss got, what it wrote, and the
commands to run next (with the run's real paths and network, so they can be pasted as they are).
"""
from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import Any, List

from insightface_adadistill.config import RunConfig
from insightface_adadistill.training.checkpoint.sets import MODEL_FILE, SETS_DIR
from insightface_adadistill.training.monitor import TENSORBOARD_DIR


def run_summary(cfg: RunConfig, result: Any, seconds: float, monitor: Any) -> List[str]:
    """The summary lines of a finished or stopped run (`result` is train's `TrainResult`)."""
    output = Path(result.output)
    duration = str(datetime.timedelta(seconds=round(seconds)))
    how = "stopped by signal" if result.stopped_by_signal else "finished"
    limit = f", max_steps={cfg.max_steps}" if 0 < cfg.max_steps < cfg.total_step else ""
    lines = [f"{how} after {duration}: global step {result.global_step} of {cfg.total_step}{limit}"]
    final = monitor.final_loss()
    if final is not None:
        steps, loss = final
        lines.append(f"final loss {loss:.4f} (mean of the last {steps} step{'s' * (steps != 1)})")
    if monitor.last_verification is not None:
        step, accuracies = monitor.last_verification
        lines.append(f"{', '.join(f'{name} {acc:.5f}' for name, acc in accuracies.items())} (val_targets, "
                     f"step {step})")
    written = [output / name for name in ("training.log", TENSORBOARD_DIR, SETS_DIR, MODEL_FILE)
               if (output / name).exists()]
    lines.append("files: " + ", ".join(map(str, written)))
    if result.stopped_by_signal:
        lines.append(f"next: continue it with `adadistill train CONFIG --set output={shlex.quote(str(output))} "
                     "resume=True`")
        return lines
    model, net = shlex.quote(str(output / MODEL_FILE)), f"--network {cfg.network} --embedding-size {cfg.embedding_size}"
    bins = " ".join(shlex.quote(str(Path(cfg.rec) / f"{name}.bin")) for name in cfg.val_targets) or "lfw.bin"
    lines += ["next:",
              f"  adadistill verify {bins} {net} --model {model}",
              f"  adadistill eval-ijb {net} --model-prefix {model} --image-path IJB_ROOT --target IJBC",
              f"  adadistill export-onnx {shlex.quote(str(output / 'model.onnx'))} {net} --model {model}"]
    return lines
