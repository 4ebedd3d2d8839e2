"""Smoke tests of the benchmark scripts: they run end to end on CPU and print the documented JSON.

The scripts are run as users run them (`python benchmarks/<name>.py ...`) in a subprocess, in
their smallest configuration, so a broken import or a changed training API shows up here.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_KEYS = {"device", "teacher", "student", "classes", "embedding_size", "batch", "variant", "head",
               "teacher_dtype", "channels_last", "student_amp", "images_per_s", "ms_per_step", "ms_per_step_min",
               "ms_per_step_mean", "peak_memory_mib", "allreduce_mib_per_step", "nonfinite_losses", "grad_scale",
               "compile_mode"}


def _run(script: str, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_train_throughput_smallest_cpu_run(tmp_path: Path) -> None:
    out = tmp_path / "train_throughput.json"
    lines = _run("train_throughput.py", "--device", "cpu", "--preset", "cpu", "--batches", "4", "--classes", "50",
                 "--embedding-size", "64", "--warmup", "0", "--iters", "1", "--threads", "1",
                 "--variants", "dense-fp32", "ours-bf16-cl", "cached", "--out", str(out))
    *configs, summary, targets = lines
    assert [c["variant"] for c in configs] == ["dense-fp32", "ours-bf16-cl", "cached"]
    for config in configs:
        assert set(config) == CONFIG_KEYS
        assert config["images_per_s"] > 0 and config["nonfinite_losses"] == 0
        assert (config["teacher"], config["student"], config["batch"]) == ("tiny_resnet", "tiny_mfn", 4)
    assert configs[0]["head"] == "dense-emulated" and configs[1]["head"] == "AdaDistillHead"
    assert configs[2]["teacher_dtype"] == "cache-fp16"  # rows read from an on-disk cache, no teacher
    assert configs[0]["allreduce_mib_per_step"] > configs[1]["allreduce_mib_per_step"]  # + the (C, E) gradient
    assert summary["summary"] is True and summary["device_type"] == "cpu" and summary["preset"] == "cpu"
    ratio, cached = summary["ratios"]
    assert ratio["variant"] == "ours-bf16-cl" and ratio["speedup_vs_baseline"] > 0
    assert cached["variant"] == "cached" and cached["speedup_vs_baseline"] > 0
    (row,) = targets["rows"]  # the best online variant (the cached one has no teacher forward)
    assert targets["targets"] is True and row["best_online"] == "ours-bf16-cl" and row["target"] is None
    assert targets["compiled_vs_eager"] == [] and "ours-bf16-cl" in targets["line"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines


def test_gpu_check_script_logic_on_cpu() -> None:
    *checks, summary = _run("gpu_check.py", "--device", "cpu", "--only", "process_group")
    assert checks == [{"check": "process_group", "ok": True, "detail": "ok", "seconds": checks[0]["seconds"]}]
    assert summary["failed"] == [] and summary["passed"] == 1


@pytest.mark.slow  # ~25 s: calibrates, exports and times three teachers
def test_teacher_forward_smallest_cpu_run() -> None:
    *configs, summary = _run("teacher_forward.py", "--device", "cpu", "--networks", "tiny_vit", "--batches", "2",
                             "--warmup", "0", "--iters", "1", "--threads", "1")
    assert [c["variant"] for c in configs] == ["torch-fp32", "torch-amp", "onnx"]
    assert all(c["images_per_s"] > 0 and c["embedding_size"] == 512 and c["network"] == "tiny_vit" for c in configs)
    assert configs[2]["onnx_provider"] == "CPUExecutionProvider"
    assert summary["summary"] is True and summary["device_type"] == "cpu" and len(summary["ratios"]) == 2


@pytest.mark.slow
def test_train_throughput_vit_preset_runs() -> None:
    *configs, _summary, _targets = _run("train_throughput.py", "--device", "cpu", "--preset", "vit-cpu", "--batches", "2",
                       "--classes", "20", "--warmup", "0", "--iters", "1", "--threads", "1", "--variants", "ours-fp32")
    assert [(c["teacher"], c["student"], c["variant"]) for c in configs] == [("tiny_vit", "tiny_vit", "ours-fp32")]


def test_cache_epoch_smallest_cpu_run() -> None:
    lines = _run("cache_epoch.py", "--device", "cpu", "--images", "32", "--teacher", "tiny_resnet",
                 "--student", "tiny_mfn", "--batch", "8", "--loader-workers", "0", "--threads", "1",
                 "--rounds", "1")
    runs = {line.get("run"): line for line in lines}
    assert {"build", "epoch-online", "epoch-cached-fp32", "epoch-cached-fp16", "epoch-cached-bf16",
            "loader-cached", None} == set(runs)
    assert runs["build"]["images_per_s"] > 0 and runs["epoch-online"]["images"] == 32
    assert runs["epoch-cached-fp32"]["max_abs_alpha_delta"] == 0.0  # the fp32 cache is exact on CPU
    assert 0 < runs["epoch-cached-fp16"]["max_abs_row_error"] < runs["epoch-cached-bf16"]["max_abs_row_error"]


def test_profile_step_breaks_the_step_into_parts() -> None:
    *configs, summary = _run("profile_step.py", "--device", "cpu", "--batches", "4", "--classes", "50",
                             "--steps", "1", "--warmup", "0", "--threads", "1")
    (config,) = configs
    parts = {p["part"]: p for p in config["parts"]}
    assert {"student fwd", "student bwd", "teacher fwd", "centre update", "cosine logits", "margin",
            "cross-entropy", "clip grad norm", "optimizer step"} <= set(parts)
    assert config["unlabelled_targets"] == ["negative sampling"]  # sample_rate 1: no sampler to label
    assert config["host_reads_per_step"] == 0  # labels are checked on the data side: no read per step
    assert summary["summary"] is True and summary["device_type"] == "cpu"


def test_precision_effect_smallest_cpu_run() -> None:
    *lines, summary = _run("precision_effect.py", "--device", "cpu", "--steps", "2", "--teacher-steps", "2")
    (bf16,) = lines  # fp16 autocast only on CUDA
    assert bf16["precision"] == "bf16" and 0.99 < bf16["embeddings"]["min_cosine"] <= 1.0
    assert {"alpha", "alpha_weighted", "centre_teacher_cos", "Loss"} <= set(bf16)
    assert summary["summary"] is True and summary["device_type"] == "cpu"


def test_head_step_smallest_cpu_run() -> None:
    *configs, summary = _run("head_step.py", "--device", "cpu", "--classes", "50", "--sample-rates", "1.0", "0.1",
                             "--batch", "4", "--rounds", "2", "--warmup", "0", "--iters", "1", "--threads", "1")
    assert [(c["head"], c["sample_rate"]) for c in configs] == [
        ("standalone", 1.0), ("adadistill", 1.0), ("standalone", 0.1), ("adadistill", 0.1)]
    assert all(c["ms_per_step"] > 0 and c["steps"] == 2 and c["finite_loss"] and c["classes"] == 50 for c in configs)
    assert summary["summary"] is True and summary["device_type"] == "cpu"
    assert [(r["sample_rate"], r["adadistill_speed_vs_standalone"] > 0) for r in summary["ratios"]] == [
        (1.0, True), (0.1, True)]


@pytest.mark.slow
def test_synthetic_kd_runs_every_row_including_the_adaface_ones(tmp_path: Path) -> None:
    lines = _run("synthetic_kd.py", "--preset", "quick", "--seeds", "0", "--max-steps", "2", "--out", str(tmp_path))
    methods = [line["method"] for line in lines[:-1]]
    assert methods == ["teacher", "adadistill", "adadistill_alpha", "arcdistill", "standalone",
                       "adaface_adadistill", "adaface_standalone"]
    paired = lines[-1]["summary"]["paired"]
    assert {"adaface_adadistill - adadistill", "adaface_standalone - standalone",
            "adaface_adadistill - adaface_standalone"} <= set(paired)
