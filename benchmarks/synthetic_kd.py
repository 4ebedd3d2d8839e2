"""Teacher vs standalone vs ArcDistill vs AdaDistill (alpha and alpha') over several seeds, and the
standalone and AdaDistill alpha' rows again with the AdaFace margin.

The demo's comparison (`adadistill demo`), repeated per seed with more rows: ArcDistill (the
student trains against the teacher's frozen classifier), AdaDistill with plain alpha, and the
standalone and alpha' students with `margin = "adaface"` in place of ArcFace m 0.45. Each seed
writes its own synthetic data, trains its own teacher, then every student with identical budgets
(steps, batch, lr schedule, seed), all through the demo's functions (`insightface_adadistill.demo`),
i.e. through `load_config` + `train` and the `verify` / `eval-ijb` evaluation code.

Prints one JSON line per (method, seed), then one summary line: mean ± std per method over seeds,
paired differences on the same seed (each method minus the next in the paper's ordering, and
minus the standalone student; each AdaFace row minus its ArcFace row, and AdaFace AdaDistill minus
AdaFace standalone; with the number of seeds it is ahead), the end-of-training alpha
levels of the AdaDistill runs, whether the means follow the paper's ordering, the device and the
wall time. The trainers' own log lines go to
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
from insightface_adadistill.demo.presets import PRESETS, TEACHER, DemoPreset, pick_preset
from insightface_adadistill.demo.report import DISTILL_CURVES, final_means, json_ready, read_scalars
from insightface_adadistill.evaluation.verification import VerificationSet

# the paper's ordering, best first
ORDER = (TEACHER, "adadistill", "adadistill_alpha", "arcdistill", "standalone")
# the AdaFace-margin rows, each beside the ArcFace row it repeats with the other margin
ADAFACE_OF = {"adaface_adadistill": "adadistill", "adaface_standalone": "standalone"}
METRICS = ("accuracy", "auc")


def run_seed(preset: DemoPreset, out: Path, seed: int, dist: distributed.DistInfo,
             max_steps: int | None) -> List[Dict[str, Any]]:
    """Data, teacher and every student for one seed; returns one result row per method."""
    data = generate_data(preset, out / "data", seed)
    place = RunPlace(rec=data["rec"], runs_dir=out / "runs", seed=seed, device=dist.device.type)
    students = [m for m in (*ORDER, *ADAFACE_OF) if m != TEACHER]
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


def _metrics(row: Mapping[str, Any]) -> Dict[str, float]:
    """accuracy, auc and tar@<far> of one result row."""
    return {**{m: row[m] for m in METRICS}, **{f"tar@{far:g}": tar for far, tar in row["tar_at_far"].items()}}


def paired(by_seed_a: Mapping[int, Mapping[str, Any]], by_seed_b: Mapping[int, Mapping[str, Any]]
           ) -> Dict[str, Dict[str, float]]:
    """Per metric: mean ± std over seeds of (a - b) on the same seed and data, and in how many
    seeds a is ahead. Seeds share the data and the teacher, so this cancels most of the noise
    that separates one seed's dataset from another's."""
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    diffs = [{k: v - _metrics(by_seed_b[s])[k] for k, v in _metrics(by_seed_a[s]).items()} for s in seeds]
    return {k: {**_mean_std([d[k] for d in diffs]), "ahead": sum(d[k] > 0 for d in diffs), "of": len(seeds)}
            for k in diffs[0]}


def summarise(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Mean ± std (sample std over seeds) per method and metric, the alpha levels of the AdaDistill
    runs, and paired differences: each method minus the next one in the paper's ordering, each
    student minus the standalone student, each AdaFace row minus its ArcFace row, and AdaFace
    AdaDistill minus AdaFace standalone."""
    by_method: Dict[str, Dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["seed"]] = row
    present = [m for m in ORDER if m in by_method]
    summary: Dict[str, Any] = {}
    for method in present + [m for m in ADAFACE_OF if m in by_method]:
        values = [_metrics(r) for r in by_method[method].values()]
        entry: Dict[str, Any] = {name: _mean_std([v[name] for v in values]) for name in values[0]}
        alpha = [r["distill_final_means"] for r in by_method[method].values()]
        if alpha[0]:
            entry["distill_final_means"] = {tag: _mean_std([a[tag] for a in alpha]) for tag in alpha[0]}
        summary[method] = entry
    pairs = list(zip(present, present[1:]))
    pairs += [(m, "standalone") for m in present if m not in ("standalone", TEACHER) and
              (m, "standalone") not in pairs and "standalone" in by_method]
    pairs += [(m, arc) for m, arc in ADAFACE_OF.items() if m in by_method and arc in by_method]
    if set(ADAFACE_OF) <= set(by_method):
        pairs.append(("adaface_adadistill", "adaface_standalone"))
    summary["paired"] = {f"{a} - {b}": paired(by_method[a], by_method[b]) for a, b in pairs}
    return summary


def ordering(summary: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """The methods sorted by the mean of `metric`, and whether that is the paper's ORDER."""
    present = [m for m in ORDER if m in summary]
    ranked = sorted(present, key=lambda m: -summary[m][metric]["mean"])
    return {"ranked": ranked, "matches_paper": ranked == present}


def orderings(summary: Mapping[str, Any]) -> Dict[str, Any]:
    """`ordering` for every metric the teacher has (accuracy, auc, tar@<far>)."""
    return {metric: ordering(summary, metric) for metric, value in summary[TEACHER].items()
            if "mean" in value}


def read_rows(paths: Sequence[Path]) -> List[Dict[str, Any]]:
    """The (method, seed) JSON lines of earlier runs (other lines are skipped), FAR keys as floats."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.startswith("{") else {}
            if "method" in row:
                row["tar_at_far"] = {float(far): tar for far, tar in row["tar_at_far"].items()}
                rows.append(row)
    if not rows:
        raise SystemExit(f"no result lines in {', '.join(map(str, paths))}")
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cpu", choices=("auto", *PRESETS))
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("work_dirs/synthetic_kd"),
                        help="where data and runs go (replaced per seed)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke test)")
    parser.add_argument("--from-results", type=Path, nargs="+", metavar="JSONL",
                        help="train nothing: summarise the result lines of earlier runs (e.g. seeds "
                             "run as separate jobs; every seed is deterministic on its own)")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    started = time.perf_counter()
    if args.from_results:
        rows = read_rows(args.from_results)
        summary = summarise(rows)
        print(json.dumps(json_ready({"summary": summary, "ordering": orderings(summary),
                                     "seeds": sorted({r["seed"] for r in rows})})), flush=True)
        return 0
    preset = pick_preset(args.preset, args.device)
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
    print(json.dumps(json_ready({
        "summary": summary, "ordering": orderings(summary), "preset": preset.name, "seeds": args.seeds,
        "device": device_name(dist.device), "seconds": round(time.perf_counter() - started, 1)})), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
