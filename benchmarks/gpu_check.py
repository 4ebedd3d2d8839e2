"""One-off checks of the CUDA-only paths that the CPU test suite cannot reach; under 2 min on one GPU.

1. `process_group`: `init_distributed('cuda')` builds an nccl group at world size 1 and an
   all-reduce on the GPU works.
2. `train_fp16_scaler`: 20 steps of the real trainer (tiny recipe, synthetic data) with fp16
   autocast and GradScaler: finite losses, `model.pt` written, the grad scale logged.
3. `train_bf16`: the same with bf16 autocast (no GradScaler, so no grad scale in the log).
4. `distill_half_teacher`: a tiny teacher trained first, then AdaDistill with the teacher in fp16,
   channels_last, and an fp16 student: finite losses, alpha logged, `model.pt` written.
5. `recordio_prefetch`: a small synthetic `.rec` (`build_synthetic_suite`) read by 2 workers into
   the CUDA-stream prefetcher for a few steps, then the final verification on its `.bin`.
6. `teacher_cache_exact`: `adadistill cache-teacher` on the GPU for that `.rec` (fp32 rows, the
   training batch size), then the same AdaDistill run with the online teacher and with
   `teacher_cache`, rows prefetched with the images: both finish, and the detail says whether the
   two `model.pt` are bit-identical on this GPU (docs/teacher-cache.md, "Exactness").
7. `uint8_normalise_bits`: the loader's on-device normalisation of uint8 pixels gives, for all 256
   values, the bits of the CPU float path (and, for information, whether fused SGD matches the
   foreach update on this device).
8. `compile_cuda_graphs`: AdaDistill with `compile=True, compile_mode='reduce-overhead'` (student
   and fp16 teacher compiled, CUDA graphs): finite losses, `model.pt` without `_orig_mod.` keys
   that loads into an uncompiled model.
9. `nccl_two_process`: a 2-process torchrun AdaDistill run over nccl when the machine has >= 2
   GPUs; skipped (and reported as skipped) on one GPU.

Every training run is `python -m insightface_adadistill train` in a subprocess, as users launch it.
One JSON line per check, then a summary; exit status 1 if any check failed.

    python benchmarks/gpu_check.py                          # on the GPU host
    .venv/bin/python benchmarks/gpu_check.py --device cpu   # the script's logic only (gloo, no scaler)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from insightface_adadistill import distributed
from insightface_adadistill.backbones import get_model
from insightface_adadistill.data.datasets import normalise_pixels, to_tensor
from insightface_adadistill.serialization import load_file
from insightface_adadistill.synthetic.suite import build_synthetic_suite

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny_cpu.py")
RUN_TIMEOUT_S = 300
SKIPPED = "skipped: "  # a check that cannot run on this machine starts its detail with this
NOTE = "_note"  # a check whose name ends so reports a measurement, and fails only by raising
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def run_command(cmd: List[str]) -> str:
    """Run one of our commands from this checkout; '' on success, else the exit status and output tail."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"
    return ""


@dataclass
class CheckResult:
    check: str
    ok: bool
    detail: str
    seconds: float = 0.0


class Checks:
    """The six checks, sharing one device, one scratch folder and one trained tiny teacher."""

    def __init__(self, device: str, scratch: Path) -> None:
        self.device = device
        self.scratch = scratch

    # ---- helpers -------------------------------------------------------------------------------

    def train(self, name: str, *overrides: str, steps: int = 20,
              launcher: tuple[str, ...] = (sys.executable,)) -> tuple[Path, str]:
        """Run the trainer on the tiny recipe for `steps` steps; returns (output folder, problems or '')."""
        output = self.scratch / name
        cmd = [*launcher, "-m", "insightface_adadistill", "train", TINY, "--set", f"output={output}",
               f"device={self.device}", "progress_bar=False", "frequent=5", "num_epoch=2", f"max_steps={steps}",
               *overrides]
        problem = run_command(cmd)
        return output, problem or self._check_outputs(output)

    @staticmethod
    def _check_outputs(output: Path) -> str:
        log_path = output / "training.log"
        if not log_path.is_file():
            return f"no {log_path}"
        losses = [float(v) for v in re.findall(r"Loss (\S+)", log_path.read_text())]
        if not losses:
            return "no loss logged"
        if not all(math.isfinite(v) for v in losses):
            return f"non-finite loss logged: {losses}"
        if not (output / "model.pt").is_file():
            return "model.pt not written"
        return ""

    @staticmethod
    def log(output: Path) -> str:
        return (output / "training.log").read_text()

    # ---- the checks ----------------------------------------------------------------------------

    def process_group(self) -> str:
        info = distributed.init_distributed(self.device)
        try:
            backend = torch.distributed.get_backend()
            expected = "nccl" if info.device.type == "cuda" else "gloo"
            ones = torch.ones(4, device=info.device)
            torch.distributed.all_reduce(ones)
            if backend != expected or info.world_size != 1 or not torch.equal(ones.cpu(), torch.ones(4)):
                return f"backend {backend} (want {expected}), world size {info.world_size}, all_reduce {ones}"
            return ""
        finally:
            distributed.destroy_distributed()

    def train_fp16_scaler(self) -> str:
        output, problem = self.train("fp16", "fp16=True", "amp_dtype='fp16'")
        if problem:
            return problem
        if self.device == "cuda" and "Fp16 Grad Scale" not in self.log(output):
            return "GradScaler enabled but no grad scale in training.log"
        return ""

    def train_bf16(self) -> str:
        output, problem = self.train("bf16", "fp16=True", "amp_dtype='bf16'")
        if problem:
            return problem
        if "Fp16 Grad Scale" in self.log(output):
            return "bf16 run logged a grad scale: GradScaler should be off"
        return ""

    def teacher(self) -> tuple[Path, str]:
        """The tiny teacher every distillation check uses, trained once (model.pt, problems or '')."""
        folder = self.scratch / "teacher"
        if (folder / "model.pt").is_file():
            return folder / "model.pt", ""
        folder, problem = self.train("teacher", "network='tiny_resnet'")
        return folder / "model.pt", problem

    def distill_overrides(self, teacher: Path) -> tuple[str, ...]:
        return ("distill='adadistill'", "teacher_network='tiny_resnet'", f"teacher_weights='{teacher}'")

    def distill_half_teacher(self) -> str:
        teacher, problem = self.teacher()
        if problem:
            return f"teacher run: {problem}"
        output, problem = self.train("student", *self.distill_overrides(teacher), "teacher_dtype='fp16'",
                                     "teacher_channels_last=True", "fp16=True", "amp_dtype='fp16'")
        if problem:
            return problem
        if "alpha=" not in self.log(output):
            return "no alpha in training.log"
        return ""

    def recordio_prefetch(self) -> str:
        paths = build_synthetic_suite(self.scratch / "synthetic", num_train_ids=16, images_per_id=8,
                                      num_heldout_ids=8, num_val_pairs=40, ijb_templates_per_identity=2,
                                      ijb_media_per_template=1, ijb_images_per_media=1)
        output, problem = self.train("recordio", f"rec='{paths['rec']}'", "num_classes=16", "num_image=128",
                                     "num_workers=2", "val_targets=['synth_val']", steps=8)
        if problem:
            return problem
        if "Accuracy-Flip" not in self.log(output):
            return "no verification result in training.log"
        return ""

    def teacher_cache_exact(self) -> str:
        """Online vs cached distillation on the GPU; a mismatch beyond 1e-3 fails, any mismatch is reported."""
        teacher, problem = self.teacher()
        if problem:
            return f"teacher run: {problem}"
        paths = build_synthetic_suite(self.scratch / "cache_data", num_train_ids=16, images_per_id=8,
                                      num_heldout_ids=8, num_val_pairs=40, ijb_templates_per_identity=2,
                                      ijb_media_per_template=1, ijb_images_per_media=1)
        sets = [f"rec='{paths['rec']}'", "num_classes=16", "num_image=128", "num_workers=2",
                "distill='adadistill'", "teacher_network='tiny_resnet'", f"teacher_weights='{teacher}'"]
        cache = self.scratch / "teacher_cache"
        problem = run_command([sys.executable, "-m", "insightface_adadistill", "cache-teacher", TINY, "--set",
                               f"device={self.device}", "progress_bar=False", *sets, "--out", str(cache)])
        if problem:
            return f"cache-teacher: {problem}"
        online, problem = self.train("online", *sets, steps=8)
        if problem:
            return f"online run: {problem}"
        cached, problem = self.train("cached", *sets, f"teacher_cache='{cache}'", steps=8)
        if problem:
            return f"cached run: {problem}"
        a, b = load_file(online / "model.pt"), load_file(cached / "model.pt")
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        outcome = "bit-identical" if worst == 0 else f"max |delta| {worst:.3e}"
        print(json.dumps({"check_detail": "teacher_cache_exact", "model_pt_online_vs_cached": outcome}), flush=True)
        return "" if worst <= 1e-3 else f"cached run's model.pt differs from the online run's by {worst:.3e}"

    def uint8_normalise_bits(self) -> str:
        every_value = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16).contiguous()
        expected = to_tensor(every_value.permute(1, 2, 0).numpy(), False)
        got = normalise_pixels(every_value[None].to(self.device))[0].cpu()
        if not torch.equal(got, expected):
            bad = (got != expected).nonzero()[:5].tolist()
            return f"on-device normalisation differs from the CPU float path at {bad}"
        return ""

    def fused_sgd_note(self) -> str:
        """Whether fused SGD gives the foreach update's bits here (information for docs/speed.md)."""
        results = []
        for kwargs in ({"foreach": True}, {"fused": True}):
            torch.manual_seed(0)
            model = get_model("tiny_mfn", num_features=64).to(self.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **kwargs)
            images = torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(1)).to(self.device)
            for _ in range(3):
                model(images).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            results.append([p.detach().cpu() for p in model.parameters()])
        diff = max((a - b).abs().max().item() for a, b in zip(*results))
        return f"fused SGD vs foreach after 3 steps: max abs difference {diff:.3g}"

    def compile_cuda_graphs(self) -> str:
        teacher, problem = self.teacher()
        if problem:
            return f"teacher run: {problem}"
        mode = "'reduce-overhead'" if self.device == "cuda" else "None"
        output, problem = self.train("compiled", *self.distill_overrides(teacher), "teacher_dtype='fp16'",
                                     "fp16=True", "amp_dtype='fp16'", "compile=True", f"compile_mode={mode}")
        if problem:
            return problem
        state = load_file(output / "model.pt")
        if any("_orig_mod" in key for key in state):
            return "model.pt has _orig_mod. keys"
        get_model("tiny_mfn", num_features=64).load_state_dict(state, strict=True)
        return ""

    def nccl_two_process(self) -> str:
        gpus = torch.cuda.device_count() if self.device == "cuda" else 0
        if gpus < 2:
            return f"{SKIPPED}needs 2 GPUs, this machine has {gpus}"
        teacher, problem = self.teacher()
        if problem:
            return f"teacher run: {problem}"
        output, problem = self.train("nccl", *self.distill_overrides(teacher), steps=8,
                                     launcher=(TORCHRUN, "--nproc_per_node=2"))
        if problem:
            return problem
        if "alpha=" not in self.log(output):
            return "no alpha in training.log"
        return ""

    def all(self) -> Dict[str, Callable[[], str]]:
        return {"process_group": self.process_group, "train_fp16_scaler": self.train_fp16_scaler,
                "train_bf16": self.train_bf16, "distill_half_teacher": self.distill_half_teacher,
                "recordio_prefetch": self.recordio_prefetch, "teacher_cache_exact": self.teacher_cache_exact,
                "uint8_normalise_bits": self.uint8_normalise_bits,
                "fused_sgd_note": self.fused_sgd_note, "compile_cuda_graphs": self.compile_cuda_graphs,
                "nccl_two_process": self.nccl_two_process}


def run_check(name: str, check: Callable[[], str]) -> CheckResult:
    """Run one check; an exception is a failure with its message, never a crash of the whole script."""
    started = time.perf_counter()
    raised = False
    try:
        problem = check()
    except Exception as err:  # noqa: BLE001  (report every failure, keep checking)
        problem, raised = f"{type(err).__name__}: {err}", True
    ok = not problem or problem.startswith(SKIPPED) or (name.endswith(NOTE) and not raised)
    return CheckResult(name, ok, problem or "ok", round(time.perf_counter() - started, 1))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: validate this script's logic without a GPU")
    parser.add_argument("--only", nargs="+", help="run only these checks")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no GPU; run it on the GPU host, or with --device cpu "
                         "to check the script itself")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        checks = Checks(args.device, Path(scratch)).all()
        unknown = set(args.only or []) - set(checks)
        if unknown:
            raise SystemExit(f"gpu_check: unknown checks {sorted(unknown)}; choose from {list(checks)}")
        for name, check in checks.items():
            if args.only and name not in args.only:
                continue
            result = run_check(name, check)
            print(json.dumps(result.__dict__), flush=True)
            results.append(result)
    failed = [r.check for r in results if not r.ok]
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(json.dumps({"summary": True, "device": device, "torch": torch.__version__,
                      "passed": len(results) - len(failed), "failed": failed,
                      "seconds": round(sum(r.seconds for r in results), 1)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
