"""Teacher vs standalone vs ArcDistill vs AdaDistill (alpha and alpha') over several seeds.

The demo's comparison (`adadistill demo`), repeated per seed with two more rows: ArcDistill (the
student trains against the teacher's frozen classifier) and AdaDistill with plain alpha. Each seed
writes its own synthetic data, trains its own teacher, then every student with identical budgets
(steps, batch, lr schedule, seed), all through the demo's functions (`insightface_adadistill.demo`),
i.e. through `load_config` + `train` and the `verify` / `eval-ijb` evaluation code.

Prints one JSON line per (method, seed), then one summary line: mean ± std per method over seeds,
the paired difference to the standalone student (same seed, same data), the end-of-training alpha
levels of the AdaDistill runs, the device and the wall time. The trainers' own log lines go to
<out>/seed<N>/train_stdout.log, so stdout holds only JSON.

    .venv/bin/python benchmarks/synthetic_kd.py                      # cpu preset, seeds 0 1 2
    .venv/bin/python benchmarks/synthetic_kd.py --seeds 0 1 2 3 4 --out /tmp/kd --device cuda --preset gpu
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch

from insightface_adadistill import distributed
from insightface_adadistill.demo.configs import RunPlace, write_run_configs
from insightface_adadistill.demo.pipeline import (evaluate_run, generate_data, ijb_workers_for,
                                                  max_steps_overrides, train_run)
from insightface_adadistill.demo.presets import METHODS, PRESETS, TEACHER, DemoPreset, pick_preset
from insightface_adadistill.demo.report import DISTILL_CURVES, final_means, json_ready, read_scalars
from insightface_adadistill.evaluation.verification import VerificationSet

# the paper's ordering, best first
ORDER = (TEACHER, "adadistill", "adadistill_alpha", "arcdistill", "standalone")
METRICS = ("accuracy", "auc")


def run_seed(preset: DemoPreset, out: Path, seed: int, dist: distributed.DistInfo,
             max_steps: int | None) -> List[Dict[str, Any]]:
    """Data, teacher and every student for one seed; returns one result row per method."""
    data = generate_data(preset, out / "data", seed)
    place = RunPlace(rec=data["rec"], runs_dir=out / "runs", seed=seed, device=dist.device.type)
    students = [m for m in ORDER if m != TEACHER]
    configs = write_run_configs(preset, place, out / "configs", students)
    vset = VerificationSet.load(data["synth_val"])
    rows = []
    with open(out / "train_stdout.log", "w") as log:
        for method, path in configs.items():
            with contextlib.redirect_stdout(log):
                run = train_run(path, dist, max_steps_overrides(max_steps))
                result = evaluate_run(run, vset, data["ijb"], device=dist.device,
                                      ijb_workers=ijb_workers_for(dist.device, preset))
            tensorboard_dir = Path(run["output"]) / "tensorboard"
            alpha = final_means(read_scalars(tensorboard_dir, list(DISTILL_CURVES)))
            row = {"method": method, "seed": seed, "network": run["network"], "steps": run["steps"],
                   "train_seconds": round(run["seconds"], 1),
                   **{k: v for k, v in result.items() if k not in ("fpr", "tpr")},
                   "distill_final_means": alpha}
            print(json.dumps(json_ready(row)), flush=True)
            rows.append(row)
    return rows


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def summarise(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Mean ± std (sample std over seeds) per method and metric, and the paired difference to the
    standalone student of the same seed."""
    fars = sorted(rows[0]["tar_at_far"])
    by_method: Dict[str, Dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["seed"]] = row

    def metrics(row: Mapping[str, Any]) -> Dict[str, float]:
        return {**{m: row[m] for m in METRICS}, **{f"tar@{far:g}": row["tar_at_far"][far] for far in fars}}

    summary: Dict[str, Any] = {}
    base = by_method.get("standalone", {})
    for method in [m for m in ORDER if m in by_method]:
        seeds = sorted(by_method[method])
        values = [metrics(by_method[method][s]) for s in seeds]
        entry = {name: _mean_std([v[name] for v in values]) for name in values[0]}
        paired = [s for s in seeds if s in base]
        if method != "standalone" and paired:
            entry["minus_standalone"] = {
                name: _mean_std([metrics(by_method[method][s])[name] - metrics(base[s])[name] for s in paired])
                for name in values[0]}
        alpha = [by_method[method][s]["distill_final_means"] for s in seeds]
        if alpha[0]:
            entry["distill_final_means"] = {tag: _mean_std([a[tag] for a in alpha]) for tag in alpha[0]}
        summary[method] = entry
    return summary


def ordering(summary: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """The methods sorted by the mean of `metric`, and whether that is the paper's ORDER."""
    present = [m for m in ORDER if m in summary]
    ranked = sorted(present, key=lambda m: -summary[m][metric]["mean"])
    return {"ranked": ranked, "matches_paper": ranked == present}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cpu", choices=("auto", *PRESETS))
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("work_dirs/synthetic_kd"),
                        help="where data and runs go (replaced per seed)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke test)")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    preset = pick_preset(args.preset, args.device)
    started = time.perf_counter()
    dist = distributed.init_distributed(args.device)
    rows: List[Dict[str, Any]] = []
    try:
        for seed in args.seeds:
            folder = args.out / f"seed{seed}"
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            rows += run_seed(preset, folder, seed, dist, args.max_steps)
    finally:
        distributed.destroy_distributed()
    summary = summarise(rows)
    device = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else (
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(json.dumps(json_ready({
        "summary": summary, "ordering": {m: ordering(summary, m) for m in ("accuracy", "auc")},
        "preset": preset.name, "seeds": args.seeds, "device": device,
        "seconds": round(time.perf_counter() - started, 1)})), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
