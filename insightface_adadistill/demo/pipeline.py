"""The demo's three stages on the user-facing code paths: write data, train, evaluate.

Data comes from `build_synthetic_suite` (a real train.rec, a .bin and an IJB folder), training
from `load_config` + `train` (the trainer `adadistill train` runs), evaluation from the functions
behind `adadistill verify` and `adadistill eval-ijb`. Nothing here is demo-only maths.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from insightface_adadistill.backbones.loading import load_backbone
from insightface_adadistill.config import load_config
from insightface_adadistill.demo.presets import DemoPreset
from insightface_adadistill.distributed import DistInfo
from insightface_adadistill.errors import UserError
from insightface_adadistill.evaluation.ijb import backbone_embedder, evaluate_ijb
from insightface_adadistill.evaluation.roc import tar_at_fars
from insightface_adadistill.evaluation.verification import VerificationSet, evaluate_backbone
from insightface_adadistill.synthetic.identities import SyntheticFaceConfig
from insightface_adadistill.synthetic.suite import build_synthetic_suite
from insightface_adadistill.training.train import train

IJB_TARGET = "IJBC"
IJB_NAME = "IJB-C"  # how tables name it
# A FAR is reported only where at least this many impostor pairs score above the threshold;
# below that the TAR is decided by a handful of pairs.
MIN_FALSE_ACCEPTS = 20
CANDIDATE_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def generate_data(preset: DemoPreset, out_dir: Path, seed: int) -> Dict[str, str]:
    """Write the preset's synthetic train.rec, synth_val.bin and IJB folder under `out_dir`; returns
    `build_synthetic_suite`'s paths (rec, train_rec, synth_val, ijb, manifest)."""
    return build_synthetic_suite(out_dir, preset.train_ids, preset.images_per_id, preset.heldout_ids, seed,
                                 config=SyntheticFaceConfig.difficulty(preset.difficulty),
                                 num_val_pairs=preset.val_pairs, ijb_target=IJB_TARGET,
                                 ijb_templates_per_identity=preset.ijb_templates_per_id,
                                 ijb_media_per_template=1, ijb_images_per_media=preset.ijb_images_per_template)


class TrainingStopped(UserError, RuntimeError):
    """A run ended before its last step (SIGTERM), so its model.pt is not the trained model."""


def train_run(config_path: Path, dist: DistInfo, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Load a config file exactly as `adadistill train` does and train it in this process.

    Returns:
        dict(output, network, embedding_size, steps, seconds).

    Raises:
        TrainingStopped: the trainer stopped early on SIGTERM or Ctrl-C (it saves and returns).
    """
    cfg = load_config(config_path, list(overrides), world_size=dist.world_size)
    started = time.perf_counter()
    result = train(cfg, dist)
    if result.stopped_by_signal:
        raise TrainingStopped(f"{result.output}: training stopped at global step {result.global_step}, before "
                              f"its last step (SIGTERM or Ctrl-C). Resume it with `adadistill train "
                              f"{config_path} --set resume=True`, or rerun")
    return {"output": str(result.output), "network": cfg.network, "embedding_size": cfg.embedding_size,
            "steps": result.global_step, "seconds": time.perf_counter() - started}


def supported_fars(num_impostor: int) -> List[float]:
    """The FARs at which `num_impostor` impostor pairs give at least `MIN_FALSE_ACCEPTS` accepts."""
    return [far for far in CANDIDATE_FARS if far * num_impostor >= MIN_FALSE_ACCEPTS]


def evaluate_run(run: Mapping[str, Any], vset: VerificationSet, ijb_root: str, *,
                 device: torch.device, ijb_workers: int = 0) -> Dict[str, Any]:
    """Verification accuracy on `vset` and IJB 1:1 TAR@FAR of a finished run's `model.pt`.

    Returns:
        dict(params, accuracy, std, xnorm, auc, tar_at_far {far: tar}, num_genuine,
        num_impostor, fpr (K,), tpr (K,)); fpr/tpr are numpy arrays for the ROC plot.
    """
    model = load_backbone(run["network"], Path(run["output"]) / "model.pt", run["embedding_size"]).to(device)
    verification = evaluate_backbone(model, vset, batch_size=128, device=device)
    ijb = evaluate_ijb(backbone_embedder(model, device), ijb_root, IJB_TARGET, batch_size=128,
                       workers=ijb_workers)
    counts = ijb["counts"]
    fars = supported_fars(counts["impostor"])
    return {"params": sum(p.numel() for p in model.parameters()), "accuracy": verification["accuracy"],
            "std": verification["std"], "xnorm": verification["xnorm"], "auc": ijb["auc"],
            "tar_at_far": tar_at_fars(ijb["fpr"], ijb["tpr"], fars), "num_genuine": counts["genuine"],
            "num_impostor": counts["impostor"], "fpr": np.asarray(ijb["fpr"]), "tpr": np.asarray(ijb["tpr"])}


def ijb_workers_for(device: torch.device, preset: DemoPreset) -> int:
    """Spawned alignment workers pay ~2 s start-up each: none on CPU, the preset's on a GPU."""
    return preset.num_workers if device.type == "cuda" else 0


def max_steps_overrides(max_steps: Optional[int]) -> List[str]:
    """`--set` keys for a smoke test of a preset: every run stops after `max_steps` steps and
    saves a checkpoint set there (the teacher's classifier then still exists for ArcDistill)."""
    return [] if not max_steps else [f"max_steps={max_steps}", f"save_every_steps={max_steps}"]
