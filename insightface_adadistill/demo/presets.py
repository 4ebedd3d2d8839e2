"""What the demo trains: dataset size, networks and budgets per preset, and the compared methods.

A preset fixes everything that decides the cost of the demo. The methods are the rows of the
paper's table that the demo and `benchmarks/synthetic_kd.py` compare: each is a handful of config
keys on top of one shared student config, so the students differ in the distillation only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

import torch

# lr / 10 after half and after three quarters of the run. The paper's drops (epochs 8, 14, 20, 25
# of 26) assume 26 epochs; scaled to a few epochs they would leave most of a short run at lr <= 1e-3.
DROP_FRACTIONS = (0.5, 0.75)
LR_BATCH = 512  # the paper: lr 0.1 at a global batch of 512, scaled linearly to other batches


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """Sizes and budgets of one demo run (the preset `name`: quick, cpu, gpu)."""

    name: str
    teacher_network: str  # registered backbone names
    student_network: str
    embedding_size: int  # E of both networks (teacher and student must match)
    train_ids: int
    images_per_id: int
    heldout_ids: int  # unseen identities for synth_val.bin and the IJB folder
    val_pairs: int  # pairs in synth_val.bin
    ijb_templates_per_id: int  # IJB templates of each held-out identity
    ijb_images_per_template: int  # loose crops per template (one media each)
    difficulty: str  # SyntheticFaceConfig preset (easy, medium, hard)
    batch_size: int  # per-step batch of every run
    teacher_epochs: int
    student_epochs: int  # of every student
    lr: float  # SGD learning rate per 512 samples, scaled linearly to `batch_size` (the paper: 0.1)
    teacher_fp16: bool  # autocast the teacher's training (the paper's students train in fp32)
    num_workers: int  # DataLoader workers of the training runs
    frequent: int  # log / TensorBoard interval in steps (the alpha curves' resolution)

    @property
    def num_images(self) -> int:
        return self.train_ids * self.images_per_id

    def steps(self, epochs: int) -> int:
        return self.num_images // self.batch_size * epochs


PRESETS: Dict[str, DemoPreset] = {
    # seconds: for the end-to-end test
    "quick": DemoPreset("quick", "tiny_resnet", "tiny_mfn", 64, train_ids=32, images_per_id=16,
                        heldout_ids=24, val_pairs=200, ijb_templates_per_id=2, ijb_images_per_template=2,
                        difficulty="easy", batch_size=32, teacher_epochs=4, student_epochs=4, lr=0.4,
                        teacher_fp16=False, num_workers=0, frequent=4),
    # `make demo` on 2 CPU cores in well under 10 minutes
    "cpu": DemoPreset("cpu", "tiny_resnet", "tiny_mfn", 128, train_ids=500, images_per_id=20,
                      heldout_ids=200, val_pairs=3000, ijb_templates_per_id=4, ijb_images_per_template=1,
                      difficulty="medium", batch_size=128, teacher_epochs=16, student_epochs=8, lr=0.1,
                      teacher_fp16=False, num_workers=0, frequent=5),
    # one GPU: the paper's networks, sized by estimate (about 60 s of rendering on one core, 0.44 M
    # training images through r50/mfn) to fit benchmarks/gpu_suite.sh's 230 s slot on one H200
    "gpu": DemoPreset("gpu", "r50", "mfn", 512, train_ids=1000, images_per_id=20,
                      heldout_ids=250, val_pairs=3000, ijb_templates_per_id=4, ijb_images_per_template=2,
                      difficulty="medium", batch_size=128, teacher_epochs=10, student_epochs=6, lr=0.1,
                      teacher_fp16=True, num_workers=8, frequent=20),
}


@dataclasses.dataclass(frozen=True)
class Method:
    """One compared row: its label in the report and the config keys it sets on the student."""

    label: str
    keys: Dict[str, Any]


# The student rows share the paper's student settings (ArcFace m 0.45, exact margin gradient).
METHODS: Dict[str, Method] = {
    "standalone": Method("standalone student", {"distill": None}),
    "arcdistill": Method("ArcDistill student", {"distill": "arcdistill"}),
    "adadistill_alpha": Method("AdaDistill α student", {"distill": "adadistill", "distill_alpha": "plain"}),
    "adadistill": Method("AdaDistill α′ student", {"distill": "adadistill", "distill_alpha": "weighted"}),
    # the same two rows with the AdaFace margin (its paper's m 0.4, h 0.333) instead of ArcFace 0.45
    "adaface_standalone": Method("standalone student, AdaFace margin", {"distill": None, "margin": "adaface"}),
    "adaface_adadistill": Method("AdaDistill α′ student, AdaFace margin",
                                 {"distill": "adadistill", "distill_alpha": "weighted", "margin": "adaface"}),
}
DEMO_STUDENTS: Tuple[str, ...] = ("standalone", "adadistill")
TEACHER = "teacher"


def pick_preset(name: str, device: str) -> DemoPreset:
    """The preset by name; 'auto' is 'gpu' when CUDA is usable for `device`, else 'cpu'."""
    if name == "auto":
        name = "gpu" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose auto or one of {sorted(PRESETS)}")
    return PRESETS[name]


def lr_drop_epochs(num_epoch: int) -> List[int]:
    """1-based epochs at whose start lr is divided by 10 (`DROP_FRACTIONS` of `num_epoch`)."""
    return sorted({int(num_epoch * f) + 1 for f in DROP_FRACTIONS} & set(range(2, num_epoch + 1)))
