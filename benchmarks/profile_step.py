"""Where one training step's time goes: a `torch.profiler` breakdown of the real distillation step.

The step is the trainer's own: `DistillStep` (student, frozen teacher, `AdaDistillHead`), the
backward through GradScaler, and `optimizer_step` (unscale, clip, SGD step, scaler update,
zero_grad), built by `train_throughput.build_step` exactly as that benchmark times it. Nothing is
copied: the parts are labelled by wrapping the live objects' methods in `record_function`
ranges for the duration of the profile (student forward, teacher forward, gathers,
centre update, statistics, cosine logits, margin, cross-entropy, clipping, GradScaler, optimizer).

Every profiled op is charged to its innermost labelled range; a backward op is charged to the
range whose forward op created its autograd node (matched by the profiler's sequence numbers),
so `student bwd` and `margin bwd` are separate rows. `host reads` counts the calls that copy a
tensor value into Python (`.item()`, `.tolist()`, `bool()`, `int()`, `float()`) per range, and on
CUDA `device syncs` the synchronisations the profiler saw: on a GPU each one stalls the host
until the device has caught up, so the host can no longer queue work ahead. On CPU the rows are CPU
time; on CUDA each row also has the kernel time it launched.

    .venv/bin/python benchmarks/profile_step.py --threads 1 --out benchmarks/results/profile_step_cpu.json
    python benchmarks/profile_step.py --out benchmarks/results/profile_step_h200.json   # CUDA: paper sizes
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import train_throughput as tt
from bench_cli import add_run_arguments, benchmark_process, chosen_preset
from insightface_adadistill import distributed
from insightface_adadistill.heads import adadistill as adadistill_module
from insightface_adadistill.heads import partial_fc as partial_fc_module

PREFIX = "phase:"
BACKWARD_NODE = "autograd::engine::evaluate_function: "
SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
READ = "host read: "
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__")  # Tensor methods that copy a value to Python
BACKWARD_OTHER = "backward (other: DDP hooks, engine)"
OUTSIDE = "outside the step"


@dataclass(frozen=True)
class ProfilePreset:
    teacher: str
    student: str
    classes: int
    embedding_size: int
    batches: Sequence[int]
    variants: Sequence[str]
    warmup: int
    steps: int


PRESETS = {
    # whole run well under 2 min on 2 shared CPU cores
    "cpu": ProfilePreset("tiny_resnet", "tiny_mfn", 1000, 512, (128, 512), ("ours-fp32",), warmup=2, steps=3),
    # the paper's sizes: MFN student, r50 teacher, MS1MV2 identities
    "paper": ProfilePreset("r50", "mfn", 85742, 512, (128, 512), ("ours-fp32", "ours-fp16-cl-amp"),
                           warmup=5, steps=10),
}


# ------------------------------------------------------------------------------------------------
# labelling the live objects

def _wrapped(original: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return original(*args, **kwargs)
    return call


@contextlib.contextmanager
def labelled(targets: Sequence[tuple[Any, str, str]]) -> Iterator[List[str]]:
    """Wrap each (object, attribute, label) in a `record_function` range; yields the labels not found.

    A target missing from this version of the code (a renamed method) is skipped and reported,
    so the profile still runs, with that time falling to the enclosing range.
    """
    missing = []
    with contextlib.ExitStack() as stack:
        for owner, attribute, label in targets:
            if owner is None or not hasattr(owner, attribute):
                missing.append(label)
                continue
            stack.enter_context(mock.patch.object(owner, attribute, _wrapped(getattr(owner, attribute), label)))
        yield missing


def step_targets(setup: tt.StepSetup) -> List[tuple[Any, str, str]]:
    """The ranges of one step, outermost first: what to wrap in the live objects."""
    head = setup.head
    softmax = getattr(head, "margin_softmax", None)
    return [
        (setup.step_fn.student, "forward", "student fwd"),
        (setup.step_fn.teacher, "forward", "teacher fwd"),
        (head, "forward", "head (other)"),
        (softmax, "gather_embeddings", "gathers"),
        (softmax, "gather_labels", "gathers"),
        (adadistill_module, "all_gather_tensor", "gathers"),
        (adadistill_module, "update_class_centres", "centre update"),
        (head, "_global_stats", "head statistics"),
        (softmax, "forward", "cosine logits"),
        (getattr(softmax, "sampler", None), "sample", "negative sampling"),
        (getattr(softmax, "margin_loss", None), "forward", "margin"),
        (partial_fc_module, "distributed_cross_entropy", "cross-entropy"),
        (torch.nn.utils, "clip_grad_norm_", "clip grad norm"),
        (setup.scaler, "unscale_", "GradScaler"),
        (setup.scaler, "step", "GradScaler"),
        (setup.scaler, "update", "GradScaler"),
        (setup.scaler, "scale", "GradScaler"),
        (setup.optimizer, "step", "optimizer step"),
        (setup.optimizer, "zero_grad", "zero_grad"),
    ]


def host_read_targets() -> List[tuple[Any, str, str]]:
    """`Tensor.item()`, `.tolist()`, `bool()`, `int()`, `float()`: each one waits for the device on CUDA."""
    return [(torch.Tensor, name, name) for name in HOST_READS]


# ------------------------------------------------------------------------------------------------
# charging events to ranges

def _backward_label(label: str) -> str:
    return label.replace(" fwd", " bwd") if label.endswith(" fwd") else f"{label} bwd"


def breakdown(events: Sequence[Any], steps: int, device_type: str) -> Dict[str, Dict[str, float]]:
    """Per range: host ms/step (self CPU time of its ops), device ms/step (CUDA), host reads and syncs/step."""
    forward_range: Dict[int, str] = {}

    def innermost(event: Any) -> Optional[Any]:
        while event is not None and not event.name.startswith((PREFIX, BACKWARD_NODE)):
            event = event.cpu_parent
        return event

    for event in events:  # forward ops that created autograd nodes -> their range
        if event.sequence_nr >= 0 and not event.name.startswith(BACKWARD_NODE):
            owner = innermost(event)
            if owner is not None and owner.name.startswith(PREFIX):
                forward_range.setdefault(event.sequence_nr, owner.name[len(PREFIX):])
    main_thread = next(e.thread for e in events if e.name.startswith(PREFIX))
    rows: Dict[str, Dict[str, float]] = defaultdict(
        lambda: {"host_ms": 0.0, "device_ms": 0.0, "host_reads": 0.0, "host_syncs": 0.0})
    for event in events:
        owner = innermost(event)
        if owner is None:  # the autograd engine's device threads on CUDA; the final synchronize
            label = BACKWARD_OTHER if event.thread != main_thread else OUTSIDE
        elif owner.name.startswith(BACKWARD_NODE):
            forward = forward_range.get(owner.sequence_nr)
            label = _backward_label(forward) if forward else BACKWARD_OTHER
        else:
            label = owner.name[len(PREFIX):]
        if label == "backward":
            label = BACKWARD_OTHER
        row = rows[label]
        row["host_ms"] += event.self_cpu_time_total / 1000 / steps
        if device_type == "cuda":
            row["device_ms"] += getattr(event, "self_device_time_total", 0.0) / 1000 / steps
        if event.name in SYNC_OPS:
            row["host_syncs"] += 1 / steps
        if event.name.startswith(READ):
            row["host_reads"] += 1 / steps
    return dict(rows)


def profile_config(variant: tt.Variant, teacher_file: Path, preset: ProfilePreset, batch: int,
                   dist: distributed.DistInfo) -> Dict[str, object]:
    """Warm up, time `steps` steps without the profiler, then profile `steps` labelled steps."""
    device = dist.device
    tt_preset = tt.Preset((preset.teacher,), preset.student, preset.classes, preset.embedding_size,
                          (batch,), (variant.name,), preset.warmup, preset.steps)
    setup = tt.build_step(variant, preset.teacher, teacher_file, tt_preset, dist)
    images, labels = tt.random_batch(batch, preset.classes, device)
    for _ in range(preset.warmup):
        setup.one_step(images, labels)
    tt.synchronize(device)
    started = time.perf_counter()
    for _ in range(preset.steps):
        setup.one_step(images, labels)
    tt.synchronize(device)
    wall_ms = 1000 * (time.perf_counter() - started) / preset.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    targets = [(o, a, PREFIX + label) for o, a, label in step_targets(setup)]
    targets += [(o, a, READ + label) for o, a, label in host_read_targets()]
    with labelled(targets) as missing, profile(activities=activities) as prof:
        for _ in range(preset.steps):
            with record_function(PREFIX + "step (other)"):
                loss = setup.step_fn(images, labels)["loss"]
                with record_function(PREFIX + "backward"):
                    setup.scaler.scale(loss).backward()
                tt.optimizer_step(setup.optimizer, setup.scaler, setup.student, tt.CLIP_GRAD_NORM)
        tt.synchronize(device)
    rows = breakdown(prof.events(), preset.steps, device.type)
    rows.pop(OUTSIDE, None)
    total_host = sum(r["host_ms"] for r in rows.values())
    table = [{"part": label, "host_ms": round(r["host_ms"], 3),
              **({"device_ms": round(r["device_ms"], 3)} if device.type == "cuda" else {}),
              "host_share": round(r["host_ms"] / total_host, 4) if total_host else None,
              "host_reads_per_step": round(r["host_reads"], 2),
              **({"device_syncs_per_step": round(r["host_syncs"], 2)} if device.type == "cuda" else {})}
             for label, r in sorted(rows.items(), key=lambda item: -item[1]["host_ms"])]
    return {"device": tt.device_name(device), "device_type": device.type, "teacher": preset.teacher,
            "student": preset.student, "classes": preset.classes, "embedding_size": preset.embedding_size,
            "batch": batch, "variant": variant.name, "steps": preset.steps,
            "wall_ms_per_step_unprofiled": round(wall_ms, 2),
            "profiled_host_ms_per_step": round(total_host, 2),
            "host_reads_per_step": round(sum(r["host_reads"] for r in rows.values()), 2),
            "device_syncs_per_step": round(sum(r["host_syncs"] for r in rows.values()), 2),
            "unlabelled_targets": [label[len(PREFIX):] for label in missing], "parts": table}


# ------------------------------------------------------------------------------------------------
# command line

def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="profile_step", description=__doc__.splitlines()[0])
    add_run_arguments(parser, PRESETS, gpu_preset="paper")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--variants", nargs="+", choices=list(tt.VARIANTS))
    parser.add_argument("--classes", type=int)
    parser.add_argument("--steps", type=int, help="profiled (and, before, timed) steps per configuration")
    parser.add_argument("--warmup", type=int)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    torch.backends.cudnn.benchmark = True  # as the trainer
    with benchmark_process(args) as (dist, out):
        name, preset = chosen_preset(args, PRESETS, "paper", dist.device,
                                     ("batches", "variants", "classes", "steps", "warmup"))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            teacher_file = tt.calibrated_teacher_file(preset.teacher, preset.embedding_size, dist.device,
                                                      Path(folder))
            lines = [profile_config(tt.VARIANTS[v], teacher_file, preset, batch, dist)
                     for batch in preset.batches for v in preset.variants]
        lines.append({"summary": True, "device": tt.device_name(dist.device), "device_type": dist.device.type,
                      "torch": torch.__version__, "preset": name, "cpu_threads": torch.get_num_threads(),
                      "wall_s": round(time.perf_counter() - started, 1)})
        for line in lines:
            out.emit(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
