"""The demo's runs as real arcface_torch config files, so users can rerun any of them.

`write_run_configs` writes `<out>/configs/<run>.py`; `adadistill train <out>/configs/<run>.py
--set output=<new folder>` repeats a run exactly. The demo itself loads the same files with
`load_config`, so what the report shows is what the files say.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Iterable

from insightface_adadistill.demo.presets import LR_BATCH, METHODS, TEACHER, DemoPreset, lr_drop_epochs
from insightface_adadistill.heads import head_spec

_HEADER = """\
# Written by `adadistill demo` (preset {preset}): {what}.
# Rerun it with: adadistill train {path} --set output=<a new folder>
from easydict import EasyDict as edict

config = edict()
"""


@dataclasses.dataclass(frozen=True)
class RunPlace:
    """Where the runs read and write: the data folder (`rec`), the runs' parent folder, the seed
    of every run and the device key written into the configs."""

    rec: str
    runs_dir: Path
    seed: int
    device: str = "auto"

    def output(self, run: str) -> str:
        return str((self.runs_dir / run).resolve())


def _shared_keys(preset: DemoPreset, place: RunPlace, epochs: int) -> Dict[str, Any]:
    """Keys every run shares: the paper's optimiser (SGD 0.9, wd 5e-4, clip 5, no warm-up, lr 0.1
    per 512 samples) and a step schedule, scaled to the preset's data and epochs."""
    return {
        "embedding_size": preset.embedding_size, "sample_rate": 1.0, "optimizer": "sgd",
        "momentum": 0.9, "weight_decay": 5e-4, "batch_size": preset.batch_size, "lr": preset.lr,
        "lr_scale_batch": LR_BATCH, "lr_schedule": "step", "lr_steps": lr_drop_epochs(epochs),
        "warmup_epoch": 0, "clip_grad_norm": 5.0, "margin_grad": "exact", "frequent": preset.frequent,
        "verbose": preset.steps(epochs) // 2, "num_workers": preset.num_workers, "seed": place.seed,
        "device": place.device, "progress_bar": "auto", "resume": False, "dali": False,
        "rec": place.rec, "num_classes": preset.train_ids, "num_image": preset.num_images,
        "num_epoch": epochs, "val_targets": ["synth_val"],
    }


def teacher_keys(preset: DemoPreset, place: RunPlace) -> Dict[str, Any]:
    """The teacher: standard ArcFace (m 0.5); its last step is saved as a checkpoint set so that
    its classifier can serve ArcDistill."""
    return {**_shared_keys(preset, place, preset.teacher_epochs), "network": preset.teacher_network,
            "margin_list": (1.0, 0.5, 0.0), "fp16": preset.teacher_fp16, "distill": None,
            "save_every_steps": preset.steps(preset.teacher_epochs), "keep_checkpoints": 1,
            "output": place.output(TEACHER)}


def student_keys(preset: DemoPreset, place: RunPlace, method: str) -> Dict[str, Any]:
    """A student row of the paper: the student network, ArcFace m 0.45 with the exact gradient,
    fp32, plus the method's distillation keys. Every student gets the same steps, batch, lr
    schedule and seed, so the rows differ in the distillation only."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    spec = METHODS[method]
    head = head_spec(spec.keys["distill"])  # what the row needs from the teacher run
    keys = _shared_keys(preset, place, preset.student_epochs)
    keys.update(network=preset.student_network, margin_list=(1.0, 0.45, 0.0), fp16=False,
                output=place.output(method), **spec.keys)
    if head.teacher_embeddings:
        keys.update(teacher_network=preset.teacher_network,
                    teacher_weights=os.path.join(place.output(TEACHER), "model.pt"))
    if head.teacher_classifier:
        keys.update(teacher_classifier=os.path.join(place.output(TEACHER), "checkpoint_gpu_*.pt"))
    return keys


def write_run_configs(preset: DemoPreset, place: RunPlace, folder: Path,
                      students: Iterable[str]) -> Dict[str, Path]:
    """Write `folder/teacher.py` and `folder/<student>.py` for each student method.

    Returns:
        {run name: config file}, the teacher first (the students need its files).
    """
    folder.mkdir(parents=True, exist_ok=True)
    runs = {TEACHER: ("the teacher", teacher_keys(preset, place))}
    runs.update({method: (f"the {METHODS[method].label}", student_keys(preset, place, method))
                 for method in students})
    paths = {name: folder / f"{name}.py" for name in runs}
    for name, (what, keys) in runs.items():  # values written by `repr`
        paths[name].write_text(_HEADER.format(preset=preset.name, what=what, path=paths[name])
                               + "".join(f"config.{key} = {value!r}\n" for key, value in keys.items()))
    return paths
