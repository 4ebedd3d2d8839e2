"""Training-step throughput: images/s and peak memory of one full distillation step, data loading excluded.

Each configuration times the real `DistillStep` (student + frozen teacher + head) as the trainer
assembles it (`training.models.assemble`: DDP student, `build_teacher` from a weight file; then SGD,
GradScaler when the student runs fp16), on random in-memory (B, 3, 112, 112) batches, and compares:

- `dense-fp32` (the baseline): an EMULATION of the published AdaDistill code's head, written here
  from its documented behaviour (docs/differences.md) for comparison only: the full (C, E) centre
  matrix on every rank as a Parameter that receives an unused gradient (all-reduced, never
  stepped), a plain softmax over all classes, an fp32 teacher;
- `ours-*`: `AdaDistillHead` (sharded centres as buffers, no gradient) with the teacher in fp32,
  or bf16/fp16 autocast with channels_last; `ours-fp16-cl-amp` also runs the student in fp16 with
  GradScaler;
- `compiled` / `compiled-fp16-cl-amp` / `graphs-fp16-cl-amp`: `ours-fp32` / `ours-fp16-cl-amp` with
  `compile = True` (`compile_step`: student and teacher forward compiled in place), the last with
  `compile_mode = 'reduce-overhead'` (CUDA graphs); the warm-up steps include the compilation;
- `cached` / `cached-amp`: `AdaDistillHead` with NO teacher forward: each step reads the batch's
  rows (index, flipped) from a real on-disk teacher cache (`RowFile`, fp16 rows, as
  `teacher_cache` training does, here on the timed thread) and copies them to the device.

The teachers are random-init networks whose BatchNorm running statistics are first calibrated by a
few train-mode forwards on random images (otherwise the eval-mode activations of a random r50/r100
overflow in half precision). Timing does not depend on the values; non-finite losses are counted.

Every step is timed on its own (synchronised on CUDA); `images_per_s` is batch / median step time,
which shrugs off bursts from other jobs on a shared host. One JSON line per configuration, then a
summary line with every variant's speed and peak memory relative to `dense-fp32` for the same
teacher and batch, measured in the same run, and a `targets` line: the best online variant per
teacher and batch against the speed-up targets (2x at batch 512, 1.5x at 128) and every compiled
variant against its eager twin. `allreduce_mib_per_step` is the gradient each rank
would send at world size > 1 (here one process: the collectives run but move nothing between GPUs).

    .venv/bin/python benchmarks/train_throughput.py --threads 1          # CPU preset, ~5 s
    python benchmarks/train_throughput.py --out train_throughput.json    # on CUDA: the paper preset
    python benchmarks/train_throughput.py --preset vit                   # ViT-T student, ViT-S/B teachers
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bench_cli import add_run_arguments, benchmark_process, chosen_preset
from data_throughput import cpu_name
from insightface_adadistill import distributed
from insightface_adadistill.backbones import get_model
from insightface_adadistill.cache.store import ARRAY, RowFile, create_array
from insightface_adadistill.config import RunConfig, build_run_config
from insightface_adadistill.heads import HeadOutput, build_margin_loss
from insightface_adadistill.heads.partial_fc import init_centres
from insightface_adadistill.serialization import save_file_atomic
from insightface_adadistill.training.models import assemble
from insightface_adadistill.training.optim import build_optimizer, host_param_groups
from insightface_adadistill.training.step import DistillStep
from insightface_adadistill.training.train import optimizer_step

ARC_MARGIN = (1.0, 0.45, 0.0)  # the paper's AdaArcDistill margin
CLIP_GRAD_NORM = 5.0  # the paper's backbone clip
BASELINE = "dense-fp32"


@dataclass(frozen=True)
class Variant:
    """One way to run the step: head kind, teacher precision and layout, student autocast."""

    name: str
    head: str  # "dense" (published-code emulation) or "adadistill" (ours)
    teacher_dtype: str
    channels_last: bool
    student_amp: Optional[str]  # None: fp32 student (the paper); "fp16": autocast + GradScaler on CUDA
    cache_dtype: Optional[str] = None  # set: teacher rows come from a teacher cache of this dtype
    compile_mode: Optional[str] = None  # set: `compile_step` (config compile=True) with this torch.compile mode


VARIANTS = {v.name: v for v in (
    Variant(BASELINE, "dense", "fp32", False, None),
    Variant("ours-fp32", "adadistill", "fp32", False, None),
    Variant("ours-bf16-cl", "adadistill", "bf16", True, None),
    Variant("ours-fp16-cl", "adadistill", "fp16", True, None),
    Variant("ours-fp16-cl-amp", "adadistill", "fp16", True, "fp16"),
    Variant("cached", "adadistill", "fp32", False, None, cache_dtype="fp16"),
    Variant("cached-amp", "adadistill", "fp32", False, "fp16", cache_dtype="fp16"),
    Variant("compiled", "adadistill", "fp32", False, None, compile_mode="default"),
    Variant("compiled-fp16-cl-amp", "adadistill", "fp16", True, "fp16", compile_mode="default"),
    Variant("graphs-fp16-cl-amp", "adadistill", "fp16", True, "fp16", compile_mode="reduce-overhead"),
)}
EAGER_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.compile_mode is None)
ONLINE_FP32 = "ours-fp32"
CACHE_ROWS = 8192  # rows of the on-disk cache the cached variants read from


@dataclass(frozen=True)
class Preset:
    teachers: Sequence[str]
    student: str
    classes: int
    embedding_size: int
    batches: Sequence[int]
    variants: Sequence[str]
    warmup: int
    iters: int


PRESETS = {
    # whole run < 60 s on 2 CPU cores
    "cpu": Preset(("tiny_resnet",), "tiny_mfn", 1000, 512, (16, 32),
                  (BASELINE, "ours-fp32", "ours-bf16-cl", "cached"), warmup=2, iters=10),
    # the issue-10 CPU comparison: a real r18 teacher and the paper's MFN student at a small batch
    "cpu-r18": Preset(("r18",), "mfn", 1000, 512, (16,), (BASELINE, "ours-fp32", "cached"), warmup=2, iters=8),
    # the paper's sizes (MS1MV2 identities, MFN student, r50 and r100 teachers); ~2-3 min on one H100
    "paper": Preset(("r50", "r100"), "mfn", 85742, 512, (128, 512), tuple(VARIANTS), warmup=5, iters=20),
    # the tiny CPU sizes, compiled against eager (the first steps compile: minutes on 2 cores)
    "cpu-compiled": Preset(("tiny_resnet",), "tiny_mfn", 1000, 512, (16, 32), ("ours-fp32", "compiled"),
                           warmup=3, iters=10),
    # transformers: the host's ViT-T as the student of ViT-S and ViT-B teachers (GPU sizes)
    "vit": Preset(("vit_s", "vit_b"), "vit_t", 85742, 512, (128, 256), EAGER_VARIANTS, warmup=5, iters=20),
    # the same code path on CPU in seconds: vit_t's layout at tiny width for student and teacher
    "vit-cpu": Preset(("tiny_vit",), "tiny_vit", 1000, 512, (16,), (BASELINE, "ours-fp32", "ours-bf16-cl"),
                      warmup=1, iters=5),
}


# ------------------------------------------------------------------------------------------------
# the published-code-like head (emulation for comparison; not used by training)

class DenseCentreHead(nn.Module):
    """EMULATION of the published AdaDistill head (docs/differences.md), to measure what our head saves.

    The full (C, E) centres live on every rank as a Parameter with requires_grad, so backward
    computes a dense (C, E) gradient that is all-reduced and then thrown away (never stepped);
    centres are updated with alpha' from the local batch by an indexed write (duplicate labels:
    one arbitrary sample wins); then a plain margin softmax over all C classes.
    forward(local_embeddings (B, E), local_labels (B,), *, teacher (B, E)) -> HeadOutput (no stats),
    the call every head takes.
    """

    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int) -> None:
        super().__init__()
        self.margin_loss = margin_loss
        self.weight = nn.Parameter(init_centres(num_classes, embedding_size))  # (C, E)

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor, *,
                teacher: torch.Tensor) -> HeadOutput:
        with torch.no_grad():
            teacher, student = F.normalize(teacher.float()), F.normalize(local_embeddings.float())
            old = self.weight[local_labels]  # (B, E)
            centre_teacher_cos = (F.normalize(old) * teacher).sum(dim=1).clamp(1e-6, 1.0)
            alpha = ((student * teacher).sum(dim=1).clamp(-1.0, 1.0) * centre_teacher_cos).clamp(1e-6, 1.0)
            self.weight[local_labels] = alpha.unsqueeze(1) * old + (1.0 - alpha).unsqueeze(1) * teacher
        cos = F.normalize(local_embeddings.float()) @ F.normalize(self.weight).t()  # (B, C), grad to both
        logits = self.margin_loss(cos.clamp(-1.0, 1.0), local_labels)
        return HeadOutput(F.cross_entropy(logits, local_labels), {})

    def all_reduce_unused_gradient(self) -> None:
        """What DDP did with the centres' gradient every step (W x 176 MB at paper size), then drop it."""
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.weight.grad)
        self.weight.grad = None


# ------------------------------------------------------------------------------------------------
# measurement helpers

def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def random_images(batch: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, 112, 112) uniform in [-1, 1], the range of normalised pixels."""
    return (torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1).to(device)


def calibrated_teacher_file(network: str, embedding_size: int, device: torch.device, folder: Path) -> Path:
    """A random-init `network` whose BN running stats are averaged over 4 random batches, saved as model.pt.

    Why: a random iResNet (conv init N(0, 0.1)) with BN's initial statistics grows by ~2x per layer
    in eval mode and overflows fp16/bf16; calibrated statistics keep activations in range, as a
    trained teacher's do. `momentum=None` makes BN keep the exact running average.
    """
    torch.manual_seed(0)
    model = get_model(network, num_features=embedding_size).to(device)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    generator = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(random_images(32, device, generator))
    path = folder / f"{network}.pt"
    save_file_atomic({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return path


class PeakMemory:
    """Peak memory of one configuration, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` (weights, optimizer state, activations, workspace).
    CPU: growth of the process's peak RSS (VmHWM, reset via /proc/self/clear_refs) over the RSS at
    the start, after gc and malloc_trim; approximate (the allocator may reuse memory it kept from
    earlier configurations), None where /proc or glibc is missing.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_kib = 0

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "peak RSS growth (VmHWM after /proc/self/clear_refs reset), approximate"

    @staticmethod
    def _status_kib(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS starts near live memory
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start_kib = self._status_kib("VmRSS")
        except (OSError, AttributeError):
            self.start_kib = -1

    def peak_mib(self) -> Optional[float]:
        if self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
        if self.start_kib < 0:
            return None
        return round((self._status_kib("VmHWM") - self.start_kib) / 1024, 1)


def cache_rows(folder: Path, embedding_size: int, dtype: str) -> RowFile:
    """A real teacher-cache array of CACHE_ROWS random rows on disk, opened as training opens it."""
    path = folder / f"{dtype}_{embedding_size}_{ARRAY}"
    if not path.is_file():
        create_array(path, (CACHE_ROWS, 2, embedding_size), dtype)
        rows = RowFile.open(path, dtype)
        rows.write(0, torch.randn(CACHE_ROWS, 2, embedding_size, generator=torch.Generator().manual_seed(3)))
        rows.close()
    return RowFile.open(path, dtype)


def gather_rows(rows: RowFile, indices: torch.Tensor, flipped: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, E) rows of samples (index, flipped), read from disk and copied to `device`."""
    batch = torch.stack([rows.read(int(i), bool(f)) for i, f in zip(indices, flipped)])  # (B, E)
    return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# one configuration

@dataclass
class StepSetup:
    """The objects of one configuration, built as the trainer builds them, and its optimizer step."""

    variant: Variant
    step_fn: DistillStep
    student: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rows: Optional[RowFile] = None  # the cached variants' teacher rows
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(3))

    def one_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward, backward and the trainer's `optimizer_step`; returns the detached loss."""
        cached = None
        if self.rows is not None:  # a fresh random draw every step: the reads hit the file, not a reused buffer
            indices = torch.randint(0, CACHE_ROWS, (images.shape[0],), generator=self.generator)
            cached = gather_rows(self.rows, indices, indices % 2 == 1, images.device)
        loss = self.step_fn(images, labels, cached)["loss"]
        self.scaler.scale(loss).backward()
        if isinstance(self.head, DenseCentreHead):
            self.head.all_reduce_unused_gradient()
        optimizer_step(self.optimizer, self.scaler, self.student, CLIP_GRAD_NORM)
        return loss.detach()


def step_config(**keys: object) -> RunConfig:
    """The run config of a benchmarked AdaDistill step (ArcFace m 0.45), `keys` on top; `assemble`
    builds the step from it. The data keys are placeholders: the benchmarks feed their own batches."""
    data = {"rec": "synthetic", "num_image": 10 ** 6, "num_epoch": 1, "warmup_epoch": 0, "val_targets": []}
    return build_run_config({**data, "distill": "adadistill", "margin_list": ARC_MARGIN, **keys})


def build_step(variant: Variant, teacher_name: str, teacher_file: Path, preset: Preset,
               dist: distributed.DistInfo) -> StepSetup:
    """Student, head, teacher (or cache rows), DDP, optimizer and GradScaler of `variant`, as `adadistill
    train` builds them."""
    device = dist.device
    cfg = step_config(network=preset.student, embedding_size=preset.embedding_size, num_classes=preset.classes,
                      fp16=variant.student_amp is not None, amp_dtype=variant.student_amp or "fp16",
                      teacher_network=teacher_name, teacher_weights=str(teacher_file),
                      teacher_dtype=variant.teacher_dtype, teacher_channels_last=variant.channels_last,
                      teacher_cache="rows read by one_step" if variant.cache_dtype else None,
                      compile=variant.compile_mode is not None, compile_mode=variant.compile_mode)
    dense = None
    if variant.head == "dense":
        dense = DenseCentreHead(build_margin_loss(ARC_MARGIN), preset.embedding_size, preset.classes)
    if variant.compile_mode is not None:
        # A training run compiles for its one batch size; without the reset, the second batch size
        # of this process would recompile with dynamic shapes (slower kernels) instead.
        torch._dynamo.reset()
    torch.manual_seed(0)
    models = assemble(cfg, dist, head=dense)
    optimised_head = nn.Module() if dense is not None else models.head  # the dense gradient is never stepped
    rows = cache_rows(teacher_file.parent, preset.embedding_size, variant.cache_dtype) if variant.cache_dtype else None
    optimizer = build_optimizer("sgd", host_param_groups(models.student, optimised_head), lr=0.1)
    scaler = torch.amp.GradScaler(device.type, growth_interval=100,
                                  enabled=variant.student_amp == "fp16" and device.type == "cuda")
    return StepSetup(variant, models.step, models.student, models.head, optimizer, scaler, rows)


def random_batch(batch: int, classes: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed (B, 3, 112, 112) images and (B,) labels every configuration is timed on."""
    generator = torch.Generator().manual_seed(2)
    images = random_images(batch, device, generator)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    return images, labels


def time_config(variant: Variant, teacher_name: str, teacher_file: Path, preset: Preset, batch: int,
                dist: distributed.DistInfo, memory: PeakMemory) -> Dict[str, object]:
    """Build the models as the trainer does, run warm-up + timed optimizer steps, return one result line."""
    device = dist.device
    memory.reset()
    setup = build_step(variant, teacher_name, teacher_file, preset, dist)
    student, head, scaler = setup.student, setup.head, setup.scaler
    images, labels = random_batch(batch, preset.classes, device)

    def one_step() -> torch.Tensor:
        return setup.one_step(images, labels)

    for _ in range(preset.warmup):
        one_step()
    synchronize(device)
    losses, seconds = [], []
    for _ in range(preset.iters):  # per-step times: the median shrugs off other jobs' bursts on a shared host
        started = time.perf_counter()
        losses.append(one_step())
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    median_s = statistics.median(seconds)
    student_mib = sum(p.numel() * 4 for p in student.parameters() if p.requires_grad) / 2 ** 20
    head_grad_mib = head.weight.numel() * 4 / 2 ** 20 if variant.head == "dense" else 0.0
    return {
        "device": device_name(device), "teacher": teacher_name, "student": preset.student,
        "classes": preset.classes, "embedding_size": preset.embedding_size, "batch": batch,
        "variant": variant.name, "head": "dense-emulated" if variant.head == "dense" else "AdaDistillHead",
        "teacher_dtype": f"cache-{variant.cache_dtype}" if variant.cache_dtype else variant.teacher_dtype,
        "channels_last": variant.channels_last,
        "student_amp": variant.student_amp or "fp32",
        "compile_mode": variant.compile_mode,
        "images_per_s": round(batch / median_s, 1),
        "ms_per_step": round(1000 * median_s, 2),
        "ms_per_step_min": round(1000 * min(seconds), 2),
        "ms_per_step_mean": round(1000 * statistics.mean(seconds), 2),
        "peak_memory_mib": memory.peak_mib(),
        "allreduce_mib_per_step": round(student_mib + head_grad_mib, 3),  # gradient bytes each rank sends at W > 1
        "nonfinite_losses": int((~torch.isfinite(torch.stack(losses))).sum()),
        "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
    }


TARGETS = {512: 2.0, 128: 1.5}  # the online-step targets: speed-up over dense-fp32 per batch
H200_TARGET_IMAGES_PER_S = 6850  # batch 512, mfn student + r50 teacher, one H200


def eager_counterpart(variant: Variant) -> Optional[str]:
    """The eager variant a compiled one is the same step as (e.g. `compiled` -> `ours-fp32`)."""
    return next((name for name, v in VARIANTS.items()
                 if v.compile_mode is None and replace(variant, name=name, compile_mode=None) == v), None)


def target_summary(results: List[Dict[str, object]]) -> Dict[str, object]:
    """One line against the targets: the best online variant per (teacher, batch) vs dense-fp32, and
    every compiled variant vs its eager counterpart, measured in this run."""
    by_key = {(r["teacher"], r["batch"], r["variant"]): r for r in results if "error" not in r}
    rows, words = [], []
    for teacher, batch in sorted({(t, b) for t, b, _ in by_key}):
        base = by_key.get((teacher, batch, BASELINE))
        online = [r for (t, b, _), r in by_key.items() if (t, b) == (teacher, batch)
                  and r["head"] == "AdaDistillHead" and not str(r["teacher_dtype"]).startswith("cache")]
        if base is None or not online:
            continue
        best = max(online, key=lambda r: r["images_per_s"])
        row = {"teacher": teacher, "batch": batch, "best_online": best["variant"],
               "images_per_s": best["images_per_s"], "peak_memory_mib": best["peak_memory_mib"],
               "speedup_vs_baseline": round(best["images_per_s"] / base["images_per_s"], 3),
               "target": TARGETS.get(batch)}
        row["met"] = row["target"] is not None and row["speedup_vs_baseline"] >= row["target"]
        rows.append(row)
        words.append(f"{teacher} b{batch}: {best['variant']} {row['speedup_vs_baseline']:.2f}x dense"
                     + (f" (target {row['target']}x: {'met' if row['met'] else 'not met'})" if row["target"] else ""))
    compiled = []
    for (teacher, batch, name), r in by_key.items():
        eager = eager_counterpart(VARIANTS[name]) if name in VARIANTS else None
        if VARIANTS.get(name) and VARIANTS[name].compile_mode and (teacher, batch, eager) in by_key:
            ratio = round(r["images_per_s"] / by_key[(teacher, batch, eager)]["images_per_s"], 3)
            compiled.append({"teacher": teacher, "batch": batch, "variant": name, "vs": eager, "speedup": ratio})
            words.append(f"{teacher} b{batch}: {name} {ratio:.2f}x {eager}")
    return {"targets": True, "rows": rows, "compiled_vs_eager": compiled,
            "h200_target_images_per_s_b512": H200_TARGET_IMAGES_PER_S, "line": "; ".join(words)}


def ratios(results: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Each variant against the baseline of the same teacher and batch: speed-up and memory ratio
    (and the speed-up over our online fp32 step, when it was measured)."""
    def by_key(name: str) -> Dict[Tuple[object, object], Dict[str, object]]:
        return {(r["teacher"], r["batch"]): r for r in results if r["variant"] == name and "error" not in r}

    base, online = by_key(BASELINE), by_key(ONLINE_FP32)
    rows = []
    for r in results:
        b = base.get((r["teacher"], r["batch"]))
        if b is None or "error" in r or r is b:
            continue
        row = {"teacher": r["teacher"], "batch": r["batch"], "variant": r["variant"],
               "speedup_vs_baseline": round(r["images_per_s"] / b["images_per_s"], 3)}
        o = online.get((r["teacher"], r["batch"]))
        if o is not None and o is not r:
            row["speedup_vs_ours_fp32"] = round(r["images_per_s"] / o["images_per_s"], 3)
        if r["peak_memory_mib"] and b["peak_memory_mib"]:
            row["peak_memory_vs_baseline"] = round(r["peak_memory_mib"] / b["peak_memory_mib"], 3)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# command line

def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_throughput", description=__doc__.splitlines()[0])
    add_run_arguments(parser, PRESETS, gpu_preset="paper")
    parser.add_argument("--teachers", nargs="+", help="teacher networks (override the preset)")
    parser.add_argument("--student", help="student network")
    parser.add_argument("--classes", type=int)
    parser.add_argument("--embedding-size", type=int)
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--warmup", type=int, help="untimed steps per configuration")
    parser.add_argument("--iters", type=int, help="timed steps per configuration")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark=True (arcface_torch sets it; our trainer does not)")
    return parser.parse_args(argv)


def _preset(args: argparse.Namespace, device: torch.device) -> Tuple[str, Preset]:
    """The named preset (auto: by device) with the command line's overrides."""
    name, preset = chosen_preset(args, PRESETS, "paper", device, ("teachers", "student", "classes", "embedding_size",
                                                                  "batches", "variants", "warmup", "iters"))
    if preset.iters < 1 or preset.warmup < 0:
        raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {preset.iters} and {preset.warmup}")
    return name, preset


def run_configs(preset: Preset, dist: distributed.DistInfo, memory: PeakMemory) -> Iterator[Dict[str, object]]:
    """Yield one result line per (teacher, batch, variant); an out-of-memory configuration is a line too."""
    with tempfile.TemporaryDirectory() as folder:
        for teacher_name in preset.teachers:
            teacher_file = calibrated_teacher_file(teacher_name, preset.embedding_size, dist.device, Path(folder))
            # One untimed step first: lazy one-off set-up (kernels, library workspaces, imports)
            # would otherwise land in the first configuration's time and peak memory.
            time_config(VARIANTS[preset.variants[0]], teacher_name, teacher_file,
                        replace(preset, warmup=0, iters=1), min(preset.batches), dist, memory)
            for batch in preset.batches:
                for name in preset.variants:
                    try:
                        yield time_config(VARIANTS[name], teacher_name, teacher_file, preset, batch, dist, memory)
                    except torch.cuda.OutOfMemoryError:
                        yield {"device": device_name(dist.device), "teacher": teacher_name, "batch": batch,
                               "variant": name, "error": "out of memory"}


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with benchmark_process(args) as (dist, out):
        preset_name, preset = _preset(args, dist.device)
        memory = PeakMemory(dist.device)
        started = time.perf_counter()
        for line in run_configs(preset, dist, memory):
            out.emit(line)
        lines = list(out.lines)
        out.emit({"summary": True, "device": device_name(dist.device), "device_type": dist.device.type,
                  "torch": torch.__version__, "preset": preset_name, "student": preset.student,
                  "classes": preset.classes, "warmup": preset.warmup, "iters": preset.iters,
                  "cpu_threads": torch.get_num_threads(), "cudnn_benchmark": args.cudnn_benchmark,
                  "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                  "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "memory": memory.kind,
                  "baseline": BASELINE, "ratios": ratios(lines), "wall_s": round(time.perf_counter() - started, 1)})
        out.emit(target_summary(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
