"""Teacher forward throughput: the PyTorch teacher vs the same network as an ONNX teacher (onnxruntime).

For each network, one calibrated random-init model (as in `train_throughput.py`) is saved as
model.pt and exported with `export_onnx`; both files go through `build_teacher`, exactly as the
trainer and the teacher cache load them, and each teacher embeds the same in-memory
(B, 3, 112, 112) batches. Variants:

- `torch-fp32`: `FrozenTeacher` in fp32 (the default `teacher_dtype`);
- `torch-amp`: `FrozenTeacher` with `teacher_dtype` bf16 (CPU) or fp16 (CUDA), channels_last;
- `onnx`: `OnnxTeacher` (onnxruntime's CPU provider, or CUDA when the device is a GPU), including
  the copy of the batch to numpy and of the embeddings back, which training pays too.

Every forward is timed on its own (synchronised on CUDA), the three variants taking turns each
iteration so that bursts from other jobs on a shared host hit them alike; `images_per_s` is
batch / median time.
onnxruntime uses its default thread count (the physical cores); `--threads` sets torch's.
One JSON line per configuration, then a summary line with each variant's speed relative to `torch-fp32`.

    .venv/bin/python benchmarks/teacher_forward.py --out benchmarks/results/teacher_forward_cpu.jsonl   # < 3 min
    python benchmarks/teacher_forward.py       # on CUDA: r50, r100, vit_s, vit_b at batch 128 and 512
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import onnxruntime as ort
import torch

from bench_cli import add_run_arguments, benchmark_process, chosen_preset
from train_throughput import calibrated_teacher_file, device_name, random_images, synchronize
from insightface_adadistill.backbones.loading import load_backbone
from insightface_adadistill.export.onnx import export_onnx
from insightface_adadistill.teacher import build_teacher

BASELINE = "torch-fp32"
VARIANTS = (BASELINE, "torch-amp", "onnx")


@dataclass(frozen=True)
class Preset:
    networks: Sequence[str]
    batches: Sequence[int]
    warmup: int
    iters: int


PRESETS = {
    "cpu": Preset(("mbf", "r18", "vit_t"), (8,), warmup=1, iters=7),  # < 3 min on 2 shared cores
    "gpu": Preset(("r50", "r100", "vit_s", "vit_b"), (128, 512), warmup=3, iters=20),
}


def _teacher(variant: str, network: str, pt: Path, onnx_file: Path, device: torch.device):
    if variant == "onnx":
        return build_teacher(None, onnx_file, 512, device)
    if variant == "torch-amp":
        return build_teacher(network, pt, 512, device, dtype="fp16" if device.type == "cuda" else "bf16",
                             channels_last=True)
    return build_teacher(network, pt, 512, device)


def time_network(network: str, files: Dict[str, Path], batch: int, preset: Preset,
                 device: torch.device) -> Iterator[Dict[str, object]]:
    """One line per variant; the variants take turns every iteration, so load bursts hit them alike."""
    teachers = {variant: _teacher(variant, network, files["pt"], files["onnx"], device) for variant in VARIANTS}
    images = random_images(batch, device, torch.Generator().manual_seed(0))
    times: Dict[str, List[float]] = {variant: [] for variant in VARIANTS}
    for iteration in range(preset.warmup + preset.iters):
        for variant, teacher in teachers.items():
            synchronize(device)
            start = time.perf_counter()
            out = teacher(images)
            synchronize(device)
            if iteration >= preset.warmup:
                times[variant].append(time.perf_counter() - start)
    for variant, teacher in teachers.items():
        median = statistics.median(times[variant])
        yield {"device": device_name(device), "network": network, "batch": batch, "variant": variant,
               "onnx_provider": teacher.session.get_providers()[0] if variant == "onnx" else None,
               "embedding_size": int(out.shape[1]), "images_per_s": round(batch / median, 1),
               "ms_per_forward": round(median * 1e3, 2), "ms_per_forward_min": round(min(times[variant]) * 1e3, 2)}


def run_configs(preset: Preset, device: torch.device) -> Iterator[Dict[str, object]]:
    with tempfile.TemporaryDirectory() as folder:
        for network in preset.networks:
            pt = calibrated_teacher_file(network, 512, device, Path(folder))
            backbone = load_backbone(network, pt, fp16=False, dropout=0.0)
            onnx_file = export_onnx(backbone, Path(folder) / f"{network}.onnx")
            for batch in preset.batches:
                yield from time_network(network, {"pt": pt, "onnx": onnx_file}, batch, preset, device)


def ratios(results: List[Dict[str, object]]) -> List[Dict[str, object]]:
    base = {(r["network"], r["batch"]): r for r in results if r["variant"] == BASELINE}
    return [{"network": r["network"], "batch": r["batch"], "variant": r["variant"],
             "speed_vs_torch_fp32": round(r["images_per_s"] / base[(r["network"], r["batch"])]["images_per_s"], 3)}
            for r in results if r["variant"] != BASELINE]


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="teacher_forward", description=__doc__.splitlines()[0])
    add_run_arguments(parser, PRESETS, gpu_preset="gpu")
    parser.add_argument("--networks", nargs="+", help="teacher networks (override the preset)")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--iters", type=int)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    with benchmark_process(args) as (dist, out):
        name, preset = chosen_preset(args, PRESETS, "gpu", dist.device, ("networks", "batches", "warmup", "iters"))
        started = time.perf_counter()
        for line in run_configs(preset, dist.device):
            out.emit(line)
        out.emit({"summary": True, "device": device_name(dist.device), "device_type": dist.device.type,
                  "torch": torch.__version__, "onnxruntime": ort.__version__, "preset": name,
                  "warmup": preset.warmup, "iters": preset.iters, "torch_threads": torch.get_num_threads(),
                  "baseline": BASELINE, "ratios": ratios(list(out.lines)),
                  "wall_s": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
