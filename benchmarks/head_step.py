"""One head step against the class count: our Partial FC head vs the AdaDistill head, side by side.

A head step is what the head costs the trainer per iteration, the student and teacher left out:
the forward on (B, E) student embeddings (a leaf that receives the gradient, standing for the
student's output), the backward, and for `standalone` (our `PartialFC`, arcface_torch's
`PartialFC_V2`) the SGD step of its learned (C, E) weight (momentum 0.9, weight decay 5e-4, as the
trainer's head group). `adadistill` (`AdaDistillHead`) has no weight gradient and no optimizer
state: its centres move inside the forward (`update_class_centres`). Both heads are built by
`build_head` as the trainer builds them, in one process (world size 1), ArcFace margin.

Each step draws fresh labels in [0, C) (duplicates possible) and embeddings from one seeded
generator. Every step is timed on its own (synchronised on CUDA); `ms_per_step` is the median
over all rounds. The heads take turns in rounds (each round builds the head afresh, runs a warm-up
step and up to `iters` timed steps or `max_seconds`, then frees it), so load bursts on a shared
host hit both alike and the 1M-class heads are never in memory together. One JSON line per head
and configuration, then a summary line with `adadistill_speed_vs_standalone` (standalone ms /
adadistill ms; above 1: AdaDistill faster).

    .venv/bin/python benchmarks/head_step.py --threads 2 --out benchmarks/results/head_step_cpu.jsonl  # CPU preset
    python benchmarks/head_step.py                   # on CUDA: the `gpu` preset, more steps
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from bench_cli import add_run_arguments, benchmark_process, chosen_preset
from train_throughput import device_name, synchronize
from insightface_adadistill.heads import HeadArgs, build_head, build_margin_loss
from insightface_adadistill.training.optim import build_optimizer

HEADS = ("standalone", "adadistill")
ARC_MARGIN = (1.0, 0.5, 0.0)


@dataclass(frozen=True)
class Preset:
    classes: Sequence[int]
    sample_rates: Sequence[float]
    batch: int
    embedding_size: int
    rounds: int
    warmup: int  # per round
    iters: int  # timed steps per round, at most
    max_seconds: float  # a round's timed steps stop here (after at least one)


PRESETS = {
    # About 4 CPU-minutes, most of it 1M classes; 13 min wall on the 2-core VM shared at load 10
    "cpu": Preset((10_000, 100_000, 1_000_000), (1.0, 0.1), batch=128, embedding_size=512, rounds=2, warmup=1,
                  iters=4, max_seconds=5.0),
    "gpu": Preset((10_000, 100_000, 1_000_000), (1.0, 0.1), batch=128, embedding_size=512, rounds=3, warmup=3,
                  iters=20, max_seconds=5.0),
}


def time_round(name: str, classes: int, sample_rate: float, preset: Preset, device: torch.device,
               seed: int) -> Tuple[List[float], bool]:
    """Build one head, run the warm-up and timed steps of one round; (seconds per step, loss finite)."""
    torch.manual_seed(0)
    head = build_head(name, HeadArgs(build_margin_loss(ARC_MARGIN), preset.embedding_size, classes,
                                     sample_rate=sample_rate)).to(device)
    params = list(head.parameters())
    optimizer = build_optimizer("sgd", [{"params": params}], lr=0.1) if params else None
    generator = torch.Generator().manual_seed(seed)
    times: List[float] = []
    started = time.perf_counter()
    for step in range(preset.warmup + preset.iters):
        labels = torch.randint(0, classes, (preset.batch,), generator=generator).to(device)
        student = torch.randn(preset.batch, preset.embedding_size, generator=generator).to(device).requires_grad_()
        teacher = torch.randn(preset.batch, preset.embedding_size, generator=generator).to(device)
        synchronize(device)
        start = time.perf_counter()
        loss = head(student, labels, teacher=teacher).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= preset.warmup:
            times.append(time.perf_counter() - start)
            if time.perf_counter() - started > preset.max_seconds:
                break
    finite = bool(torch.isfinite(loss))
    del head, optimizer, loss, student
    gc.collect()
    return times, finite


def run_configs(preset: Preset, device: torch.device) -> Iterator[Dict[str, object]]:
    for classes in preset.classes:
        for sample_rate in preset.sample_rates:
            times: Dict[str, List[float]] = {name: [] for name in HEADS}
            finite = dict.fromkeys(HEADS, True)
            for round_ in range(preset.rounds):
                for name in HEADS:  # same seed per round: both heads see the same batches
                    round_times, round_finite = time_round(name, classes, sample_rate, preset, device, round_)
                    times[name] += round_times
                    finite[name] &= round_finite
            for name in HEADS:
                yield {"device": device_name(device), "head": name, "classes": classes, "sample_rate": sample_rate,
                       "batch": preset.batch, "embedding_size": preset.embedding_size, "steps": len(times[name]),
                       "ms_per_step": round(statistics.median(times[name]) * 1e3, 2),
                       "ms_per_step_min": round(min(times[name]) * 1e3, 2), "finite_loss": finite[name]}


def ratios(results: List[Dict[str, object]]) -> List[Dict[str, object]]:
    ms = {(r["head"], r["classes"], r["sample_rate"]): r["ms_per_step"] for r in results}
    return [{"classes": c, "sample_rate": s, "standalone_ms": ms[("standalone", c, s)],
             "adadistill_ms": ms[("adadistill", c, s)],
             "adadistill_speed_vs_standalone": round(ms[("standalone", c, s)] / ms[("adadistill", c, s)], 2)}
            for head, c, s in ms if head == "standalone" and ("adadistill", c, s) in ms]


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="head_step", description=__doc__.splitlines()[0])
    add_run_arguments(parser, PRESETS, gpu_preset="gpu")
    parser.add_argument("--classes", type=int, nargs="+")
    parser.add_argument("--sample-rates", dest="sample_rates", type=float, nargs="+")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--max-seconds", dest="max_seconds", type=float)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    with benchmark_process(args) as (dist, out):
        name, preset = chosen_preset(args, PRESETS, "gpu", dist.device,
                                     ("classes", "sample_rates", "batch", "rounds", "warmup", "iters",
                                      "max_seconds"))
        started = time.perf_counter()
        for line in run_configs(preset, dist.device):
            out.emit(line)
        out.emit({"summary": True, "device": device_name(dist.device), "device_type": dist.device.type,
                  "torch": torch.__version__, "preset": name, "rounds": preset.rounds, "warmup": preset.warmup,
                  "iters": preset.iters,
                  "max_seconds": preset.max_seconds, "torch_threads": torch.get_num_threads(),
                  "ratios": ratios(list(out.lines)), "wall_s": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
