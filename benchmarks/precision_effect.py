"""What a faster teacher precision does to the numbers: embedding deviation and alpha over a short run.

On a small synthetic-identity `.rec` (`build_synthetic_suite`) a tiny teacher is trained by our
trainer; then, for each teacher precision (`teacher_dtype` fp32, bf16, and fp16 on CUDA, with
channels_last for the half ones, as docs/speed.md's fast preset):

- `embeddings`: the teacher's L2-normalised embeddings of every training image against fp32's:
  max absolute deviation, min and mean cosine;
- `run`: an AdaDistill student trained `--steps` steps with that teacher (same seed, same data),
  with the per-step alpha, alpha' (alpha_weighted), lambda (centre_teacher_cos) and loss read from
  its training.log, and the max per-step difference of each from the fp32 run (`--lr 0.001` keeps the
  trajectories together, so the difference is the precision's, not the chaos of a tiny model's
  first steps at lr 0.1).

Speed is `train_throughput.py`'s business; this script says what the speed costs in numbers.

    .venv/bin/python benchmarks/precision_effect.py --out benchmarks/results/precision_effect_cpu.jsonl
    python benchmarks/precision_effect.py --device cuda      # adds fp16
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.synthetic.suite import build_synthetic_suite
from insightface_adadistill.teacher import build_teacher
from train_throughput import device_name

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny_cpu.py")
TEACHER, EMBEDDING = "tiny_resnet", 64  # the tiny recipe's embedding size
IDENTITIES, IMAGES_PER_ID = 32, 8
LOGGED = ("alpha", "alpha_weighted", "centre_teacher_cos", "Loss")


def _train(output: Path, rec: str, device: str, steps: int, *overrides: str) -> Path:
    """`adadistill train` on the tiny recipe in a subprocess, as users launch it (its log stays off stdout)."""
    cmd = [sys.executable, "-m", "insightface_adadistill", "train", TINY, "--set", f"output={output}",
           f"rec='{rec}'", f"num_classes={IDENTITIES}", f"num_image={IDENTITIES * IMAGES_PER_ID}", f"device={device}",
           "progress_bar=False", "frequent=1", "num_epoch=100", f"max_steps={steps}", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {output.name} failed: {(proc.stderr or proc.stdout)[-2000:]}")
    return output


def logged_series(output: Path) -> Dict[str, List[float]]:
    """Per-step values of LOGGED from a frequent=1 training.log."""
    text = (output / "training.log").read_text()
    return {name: [float(v) for v in re.findall(rf"\b{name}[= ](\S+)", text)] for name in LOGGED}


def embedding_deviation(teacher_file: Path, rec: str, precision: str, device: torch.device) -> Dict[str, float]:
    """The teacher's normalised embeddings at `precision` against fp32, over every training image."""
    dataset = build_dataset(rec, IDENTITIES, seed=0)
    images = torch.stack([dataset.load_image(i, False)[0] for i in range(len(dataset))]).to(device)
    embed = {}
    for dtype in ("fp32", precision):
        teacher = build_teacher(TEACHER, teacher_file, EMBEDDING, device, dtype=dtype,
                                channels_last=dtype != "fp32")
        embed[dtype] = F.normalize(teacher(images).float())
    cos = (embed["fp32"] * embed[precision]).sum(dim=1)
    return {"max_abs_deviation": (embed["fp32"] - embed[precision]).abs().max().item(),
            "min_cosine": cos.min().item(), "mean_cosine": cos.mean().item()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="precision_effect", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--steps", type=int, default=30, help="student steps per precision")
    parser.add_argument("--teacher-steps", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="student lr; at the recipe's 0.1 a tiny student's "
                        "first steps are chaotic, so a small lr (e.g. 0.001) isolates the precision's own effect")
    parser.add_argument("--out", type=Path, help="also write every JSON line to this file")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    precisions = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]  # fp16 autocast is CUDA-only here
    started = time.perf_counter()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = build_synthetic_suite(folder / "synthetic", num_train_ids=IDENTITIES, images_per_id=IMAGES_PER_ID,
                                      num_heldout_ids=8, num_val_pairs=40, ijb_templates_per_identity=2,
                                      ijb_media_per_template=1, ijb_images_per_media=1)
        rec = paths["rec"]
        teacher = _train(folder / "teacher", rec, device.type, args.teacher_steps, f"network='{TEACHER}'")
        teacher_file = teacher / "model.pt"
        runs = {}
        for precision in ["fp32", *precisions]:
            runs[precision] = logged_series(_train(
                folder / f"student_{precision}", rec, device.type, args.steps, "distill='adadistill'",
                f"teacher_network='{TEACHER}'", f"teacher_weights='{teacher_file}'", f"teacher_dtype='{precision}'",
                f"teacher_channels_last={precision != 'fp32'}", f"lr={args.lr}"))
        for precision in precisions:
            line = {"precision": precision, "device": device_name(device), "steps": args.steps, "lr": args.lr,
                    "embeddings": embedding_deviation(teacher_file, rec, precision, device)}
            for name in LOGGED:
                ours, reference = runs[precision][name], runs["fp32"][name]
                line[name] = {"final": ours[-1], "final_fp32": reference[-1],
                              "max_step_difference": max(abs(a - b) for a, b in zip(ours, reference))}
            lines.append(line)
    lines.append({"summary": True, "device": device_name(device), "device_type": device.type,
                  "torch": torch.__version__, "teacher": TEACHER, "identities": IDENTITIES,
                  "images": IDENTITIES * IMAGES_PER_ID, "wall_s": round(time.perf_counter() - started, 1)})
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.out is not None:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
