"""Every config key we know, declared once, with its default and a one-line meaning.

`HOST_KEYS` equals arcface_torch's `configs/base.py` (same keys, defaults and order; `notes` is the
hidden key `train_v2` reads for wandb). `EXTENSION_KEYS` are the keys this plugin adds
(distillation, teacher, schedule, checkpoints, faults). `REQUIRED_KEYS` are the keys every
arcface_torch job config must supply. `KEY_TYPES` lists the keys whose type is not simply the type
of their default. Validation, the `--set` parser and the README table all read these dicts, so a
new key is added here and nowhere else.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

NoneType = type(None)

# key: (default, meaning)
HOST_KEYS: Dict[str, Tuple[Any, str]] = {
    "margin_list": ((1.0, 0.5, 0.0),
                    "(m1, m2, m3): ArcFace (1, m, 0) or CosFace (1, 0, m); s = 64"),
    "network": ("r50", "backbone name passed to get_model"),
    "resume": (False, "continue from the last complete checkpoint set in `output`"),
    "save_all_states": (False, "write `checkpoint_gpu_{rank}.pt` at every epoch end"),
    "output": ("ms1mv3_arcface_r50", "output folder; None becomes work_dirs/<config name>"),
    "embedding_size": (512, "backbone num_features and the class-centre width"),
    "sample_rate": (1, "Partial FC fraction of local negative centres sampled per step, in [0, 1]; "
                       "0 keeps the positives only (as the host's wf42m_pfc0008 config)"),
    "interclass_filtering_threshold": (0, "if > 0, negative cosines above it are zeroed"),
    "fp16": (False, "mixed precision for the student backbone (see amp_dtype)"),
    "batch_size": (128, "per-rank batch size"),
    "optimizer": ("sgd", "sgd or adamw"),
    "lr": (0.1, "base learning rate (see lr_scale_batch)"),
    "momentum": (0.9, "SGD momentum (honoured; arcface_torch hard-codes 0.9)"),
    "weight_decay": (5e-4, "weight decay on every parameter"),
    "verbose": (2000, "run verification every `verbose` global steps"),
    "frequent": (10, "log every `frequent` global steps"),
    "dali": (False, "accepted for compatibility; DALI is not used (error if True)"),
    "dali_aug": (False, "accepted for compatibility; ignored"),
    "gradient_acc": (1, "optimizer step every `gradient_acc` iterations (loss averaged over them)"),
    "seed": (2048, "global seed: model init, sampler, flips"),
    "num_workers": (2, "DataLoader workers per rank"),
    "wandb_key": ("X" * 40, "accepted for compatibility; wandb is not used"),
    "suffix_run_name": (None, "accepted for compatibility; wandb is not used"),
    "using_wandb": (False, "accepted for compatibility; must stay False (error if True)"),
    "wandb_entity": ("entity", "accepted for compatibility"),
    "wandb_project": ("project", "accepted for compatibility"),
    "wandb_log_all": (True, "accepted for compatibility"),
    "save_artifacts": (False, "accepted for compatibility"),
    "wandb_resume": (False, "accepted for compatibility"),
    "notes": (None, "accepted for compatibility"),
}

EXTENSION_KEYS: Dict[str, Tuple[Any, str]] = {
    # distillation
    "distill": (None, "None (standalone), 'adadistill', 'arcdistill' (fixed teacher classifier, "
                      "ArcFace or CosFace by margin_list) or 'feature_kd'"),
    "distill_alpha": ("weighted", "AdaDistill centre momentum: 'weighted' (alpha'), 'plain' "
                                  "(alpha) or a float in (0, 1) for a fixed momentum"),
    "feature_kd_weight": (1.0, "feature_kd: weight of the MSE between L2-normalised student and "
                               "teacher embeddings"),
    "teacher_network": (None, "teacher backbone name (e.g. 'r50'); required when distill is set"),
    "teacher_weights": (None, "teacher backbone file: `model.pt`, `backbone.pth` or "
                              "`checkpoint_gpu_*.pt`; required when distill is set"),
    "teacher_classifier": (None, "arcdistill: `checkpoint_gpu_*.pt` shard files (a list or a glob) "
                                 "or the published code's `*header.pth`; required for arcdistill"),
    "teacher_dtype": ("fp32", "teacher forward precision: fp32, bf16 or fp16 (autocast)"),
    "teacher_channels_last": (False, "run the teacher in channels_last memory format"),
    # margin
    "margin_grad": ("straight_through", "ArcFace gradient: 'straight_through' (current "
                                        "arcface_torch) or 'exact' (true derivative, AdaDistill "
                                        "code and the model-zoo runs)"),
    # optimisation and schedule
    "amp_dtype": ("fp16", "autocast dtype when fp16=True: fp16 (with GradScaler) or bf16"),
    "lr_schedule": ("poly", "'poly' (arcface_torch, warm-up then polynomial decay) or 'step'"),
    "lr_power": (1.0, "poly decay power: 1 = current arcface_torch, 2 = the model-zoo runs"),
    "lr_steps": ([], "step schedule: 1-based epochs at whose start lr is divided by 10"),
    "lr_scale_batch": (None, "if set, lr is multiplied by total_batch_size / lr_scale_batch"),
    "clip_grad_norm": (5.0, "L2 gradient-norm clip on the backbone; 0 disables"),
    # checkpoints and faults
    "save_every_steps": (0, "also checkpoint every N global steps (0 = epoch ends only)"),
    "keep_checkpoints": (2, "how many complete checkpoint sets to keep"),
    "resume_allow_changes": (False, "resume even though schedule-changing keys (lr, batch_size, world "
                                    "size, ...) differ from the saved run; the changes are logged"),
    "nonfinite_loss": ("stop", "'stop' (diagnostic, keep last good checkpoint) or 'skip' the step"),
    "device": ("auto", "auto (cuda if available), cuda or cpu"),
    "progress_bar": ("auto", "'auto' (only on a terminal), True or False"),
    "max_steps": (0, "stop after this many global steps (0 = run all epochs); for smoke tests"),
}

REQUIRED_KEYS: Dict[str, str] = {
    "rec": "dataset folder (train.rec/train.idx, also where the val .bin files are looked up), "
           "image folder, or 'synthetic'",
    "num_classes": "number of identities (checked against the data)",
    "num_image": "number of training images (used for step counts)",
    "num_epoch": "number of epochs",
    "warmup_epoch": "warm-up epochs for the poly schedule (0 or negative: none)",
    "val_targets": "list of .bin basenames looked up in `rec` (may be empty)",
}

HOST_DEFAULTS: Dict[str, Any] = {k: v for k, (v, _) in HOST_KEYS.items()}
EXTENSION_DEFAULTS: Dict[str, Any] = {k: v for k, (v, _) in EXTENSION_KEYS.items()}
DERIVED_KEYS = ("total_batch_size", "warmup_step", "total_step")

# Keys that only pre-2022 arcface_torch configs have; train_v2 ignores them, we reject them.
HISTORICAL_KEYS: Dict[str, str] = {
    "loss": "the margin comes from margin_list: (1.0, 0.5, 0.0) ArcFace, (1.0, 0.0, 0.4) CosFace",
    "dataset": "the data comes from rec alone",
    "score": "nothing reads it",
}

# Expected types where the default's own type is wrong or too narrow: None defaults, unions, and
# float keys whose host default is an int. Every other key takes its default's type. An int is
# accepted wherever a float is, and a tuple wherever a list is (easydict < 1.10 turned tuples
# into lists, newer releases keep them).
KEY_TYPES: Dict[str, Tuple[type, ...]] = {
    "margin_list": (list,),
    "output": (str, NoneType),
    "sample_rate": (float,),
    "interclass_filtering_threshold": (float,),
    "suffix_run_name": (str, NoneType),
    "notes": (str, NoneType),
    "distill": (str, NoneType),
    "distill_alpha": (str, float),
    "teacher_network": (str, NoneType),
    "teacher_weights": (str, NoneType),
    "teacher_classifier": (str, list, NoneType),
    "lr_steps": (list,),
    "lr_scale_batch": (int, NoneType),
    "progress_bar": (str, bool),
    "rec": (str,),
    "num_classes": (int,),
    "num_image": (int,),
    "num_epoch": (int,),
    "warmup_epoch": (int, float),
    "val_targets": (list,),
    "total_batch_size": (int,),
    "warmup_step": (int,),
    "total_step": (int,),
}


def known_keys() -> Tuple[str, ...]:
    """Every key a config may hold, in the order the start-up log prints them."""
    return (*HOST_KEYS, *EXTENSION_KEYS, *REQUIRED_KEYS, *DERIVED_KEYS)


def expected_types(key: str) -> Tuple[type, ...]:
    """The types `key` accepts (`KEY_TYPES`, else the type of its default)."""
    if key in KEY_TYPES:
        return KEY_TYPES[key]
    default = HOST_DEFAULTS[key] if key in HOST_DEFAULTS else EXTENSION_DEFAULTS[key]
    return (type(default),)


def config_table_markdown() -> str:
    """The README table of the keys this plugin adds to arcface_torch, with defaults and meanings.

    Regenerate with `python -c "from insightface_adadistill.config import
    config_table_markdown as t; print(t())"`; the table is derived from `EXTENSION_KEYS`, so it
    cannot drift from the code.
    """
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, (default, meaning) in EXTENSION_KEYS.items():
        rows.append(f"| `{key}` | `{default!r}` | {meaning.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
