"""Every config key, declared once as a field of `RunConfig`: default, accepted types, check, meaning.

The annotation gives the accepted types and the declaration (`host`, `ours`, `required`, `derived`)
the rest; the validator, the `--set` parser and the generated key table (docs/configs.md) read
`KEYS`, built from these fields, so a new key is one field here and nothing else.

Field order is the start-up log's: arcface_torch's `configs/base.py` keys (same names, defaults and
order; `notes` is the hidden key `train_v2` reads for wandb), our keys, the keys every job config
sets, then the keys the trainer computes. An int is accepted wherever a float is and a tuple wherever
a list (`Sequence`) is; values are kept as written (easydict < 1.10 turned tuples into lists).
"""
from __future__ import annotations

import copy
import typing
from collections.abc import Sequence as SequenceABC
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from insightface_adadistill.backbones import list_backbones
from insightface_adadistill.backbones.base import AMP_DTYPES, PRECISIONS
from insightface_adadistill.config.checks import Check, OneOf, Phrased, Refused, Registered, Rule, above, at_least
from insightface_adadistill.heads import HEADS, STANDALONE
from insightface_adadistill.heads.adadistill import ALPHA_RULE, alpha_is_valid
from insightface_adadistill.heads.margins import (ADAFACE_RULES, MARGIN_FORMS, MARGIN_GRADS, MARGINS,
                                                  margin_list_problem)

NoneType = type(None)

# The trainer's own choices; `training/optim.py` and `training/schedule.py` import these.
OPTIMIZER_KINDS = ("sgd", "adamw")
SCHEDULE_KINDS = ("poly", "step")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

GROUPS = ("host", "extension", "required", "derived")

# What `resume=True` does when a key's value differs from the saved run's (training/checkpoint/,
# docs/safety.md): refuse (the saved state only fits the saved value), refuse unless
# `resume_allow_changes=True` (the state loads but the continuation differs), or just log it.
IDENTITY, SCHEDULE, HARMLESS = "identity", "schedule", "harmless"


def _declare(group: str, default: Any, meaning: str, check: Optional[Check] = None, *, resume: str) -> Any:
    """A dataclass field carrying the key's declaration in its metadata."""
    metadata = {"group": group, "meaning": meaning, "check": check, "resume": resume}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


host = partial(_declare, "host")  # a key of arcface_torch's configs/base.py, with the host's default
ours = partial(_declare, "extension")  # a key we add; its default keeps an arcface_torch run unchanged
required = partial(_declare, "required", MISSING)  # every job config sets it (no default, as in the host)
derived = partial(_declare, "derived", MISSING)  # the trainer computes it (`derive`); setting it is an error


def _increasing_epochs(steps: Sequence[Any]) -> bool:
    positive = all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps)
    return positive and list(steps) == sorted(set(steps))


def _path_list(value: Union[str, Sequence[Any]]) -> bool:
    paths = [value] if isinstance(value, str) else list(value)
    return bool(paths) and all(isinstance(p, str) and p for p in paths)


_BACKBONE = Registered("backbone", list_backbones, "list_backbones(); docs/backbones.md")
_CHECKPOINT_SET = "checkpoint_gpu_*.pt"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A merged, validated arcface_torch config with its derived keys, read by attribute; frozen, so
    what the trainer reads is what was validated and logged. Built by `load_config`."""

    # ---- arcface_torch configs/base.py ---------------------------------------------------------
    margin_list: Sequence[float] = host(
        (1.0, 0.5, 0.0), "(m1, m2, m3) of the margin loss, s = 64 (not read when margin = 'adaface')",
        Phrased(margin_list_problem, MARGIN_FORMS), resume=IDENTITY)
    network: str = host("r50", "student backbone name passed to get_model", _BACKBONE, resume=IDENTITY)
    resume: bool = host(False, "continue from the last complete checkpoint set in `output`", resume=HARMLESS)
    save_all_states: bool = host(False, f"write `{_CHECKPOINT_SET}` at every epoch end", resume=HARMLESS)
    output: Optional[str] = host("ms1mv3_arcface_r50",
                                 "output folder; None becomes work_dirs/<config file name>", resume=HARMLESS)
    embedding_size: int = host(512, "backbone num_features and the class-centre width", at_least(1), resume=IDENTITY)
    sample_rate: float = host(1, "Partial FC fraction of local negative centres sampled per step; "
                                 "0 keeps the positives only (as the host's wf42m_pfc0008 config)",
                              Rule(lambda v: 0 <= v <= 1,
                                   "in [0, 1] (0 keeps the positive centres only)"), resume=SCHEDULE)
    interclass_filtering_threshold: float = host(
        0, "if > 0, negative cosines above it are zeroed",
        Rule(lambda v: 0 <= v < 1, "in [0, 1) (0 disables it)"), resume=SCHEDULE)
    fp16: bool = host(False, "mixed precision for the student backbone (see amp_dtype)", resume=SCHEDULE)
    batch_size: int = host(128, "per-rank batch size", at_least(1), resume=SCHEDULE)
    optimizer: str = host("sgd", "arcface_torch's optimizer choice", OneOf(OPTIMIZER_KINDS), resume=IDENTITY)
    lr: float = host(0.1, "base learning rate (see lr_scale_batch)", above(0), resume=SCHEDULE)
    momentum: float = host(0.9, "SGD momentum (honoured; arcface_torch hard-codes 0.9)",
                           Rule(lambda v: 0 <= v < 1, "in [0, 1)"), resume=SCHEDULE)
    weight_decay: float = host(5e-4, "weight decay on every parameter", at_least(0), resume=SCHEDULE)
    verbose: int = host(2000, "run verification every `verbose` global steps; 0 = no periodic "
                              "verification (the val_targets are still checked once at the end)",
                        at_least(0), resume=HARMLESS)
    frequent: int = host(10, "log every `frequent` global steps", at_least(1), resume=HARMLESS)
    dali: bool = host(False, "arcface_torch's DALI loader; True is accepted and our DataLoader, which "
                             "reads the .rec directly, takes its place (the log says so)", resume=HARMLESS)
    dali_aug: bool = host(False, "accepted for compatibility; ignored (no DALI)", resume=HARMLESS)
    gradient_acc: int = host(1, "optimizer step every `gradient_acc` iterations (loss averaged "
                                "over them)", at_least(1), resume=SCHEDULE)
    seed: int = host(2048, "global seed: model init, sampler, flips", resume=SCHEDULE)
    num_workers: int = host(2, "DataLoader workers per rank", at_least(0), resume=HARMLESS)
    wandb_key: str = host("X" * 40, "accepted for compatibility; wandb is not used", resume=HARMLESS)
    suffix_run_name: Optional[str] = host(None, "accepted for compatibility; wandb is not used", resume=HARMLESS)
    using_wandb: bool = host(False, "accepted for compatibility; must stay False",
                             Refused("wandb is not supported (metrics go to TensorBoard under "
                                     "output/tensorboard); set using_wandb = False"), resume=HARMLESS)
    wandb_entity: str = host("entity", "accepted for compatibility", resume=HARMLESS)
    wandb_project: str = host("project", "accepted for compatibility", resume=HARMLESS)
    wandb_log_all: bool = host(True, "accepted for compatibility", resume=HARMLESS)
    save_artifacts: bool = host(False, "accepted for compatibility", resume=HARMLESS)
    wandb_resume: bool = host(False, "accepted for compatibility", resume=HARMLESS)
    notes: Optional[str] = host(None, "accepted for compatibility", resume=HARMLESS)

    # ---- distillation --------------------------------------------------------------------------
    distill: Optional[str] = ours(
        None, "the head: None (standalone Partial FC) or a registered head; what each one needs is "
              "declared with it (docs/heads.md)",
        OneOf(lambda: (None, *(name for name in HEADS.names() if name != STANDALONE))), resume=IDENTITY)
    distill_alpha: Union[str, float] = ours(
        "weighted", "AdaDistill centre momentum: 'weighted' (alpha', the paper's best), 'plain' "
                    "(alpha) or a fixed momentum", Rule(alpha_is_valid, ALPHA_RULE), resume=SCHEDULE)
    feature_kd_weight: float = ours(1.0, "feature_kd: weight of the MSE between L2-normalised "
                                         "student and teacher embeddings", at_least(0), resume=SCHEDULE)
    teacher_network: Optional[str] = ours(
        None, "teacher backbone name (e.g. 'r50'); required when distill is set, except for an "
              "ONNX teacher", _BACKBONE, resume=IDENTITY)
    teacher_weights: Optional[str] = ours(
        None, f"teacher: `model.pt`, `backbone.pth` or `{_CHECKPOINT_SET}`, an ONNX model "
              f"(`*.onnx`) or an insightface model pack name (e.g. `buffalo_l`); required when "
              f"distill is set", resume=HARMLESS)
    teacher_classifier: Union[str, Sequence[str], None] = ours(
        None, f"arcdistill: `{_CHECKPOINT_SET}` shard files (a list or a glob) or the published "
              f"code's `*header.pth`; required for arcdistill",
        Rule(_path_list, "a non-empty list of file paths or one path/glob string"), resume=HARMLESS)
    teacher_dtype: str = ours("fp32", "teacher forward precision (autocast)", OneOf(PRECISIONS), resume=SCHEDULE)
    teacher_channels_last: bool = ours(False, "run the teacher in channels_last memory format", resume=HARMLESS)
    teacher_cache: Optional[str] = ours(
        None, "folder written by `adadistill cache-teacher`: the teacher's embeddings are read from "
              "it instead of running the teacher (adadistill, feature_kd; docs/teacher-cache.md)", resume=HARMLESS)

    # ---- margin --------------------------------------------------------------------------------
    margin_grad: str = ours(
        "straight_through", "ArcFace gradient: 'straight_through' (current arcface_torch) or "
                            "'exact' (true derivative of cos(theta + m), with the pre-2022-12 host's "
                            "fallback cos(theta) - m sin(m) past theta + m > pi, which the published "
                            "AdaDistill code does not have); the AdaFace margin always takes the true "
                            "derivative", OneOf(MARGIN_GRADS), resume=SCHEDULE)
    margin: str = ours(
        "margin_list", "'margin_list' (ArcFace or CosFace as margin_list says, arcface_torch) or 'adaface' "
                       "(AdaFace's feature-norm-adaptive margin, s = 64, set by the adaface_* keys; "
                       "docs/heads.md)", OneOf(MARGINS), resume=IDENTITY)
    adaface_m: float = ours(0.4, "margin = 'adaface': the margin m (angular -m z, additive m + m z for the "
                                 "scaler z in [-1, 1])", Rule(*ADAFACE_RULES["adaface_m"]), resume=SCHEDULE)
    adaface_h: float = ours(0.333, "margin = 'adaface': h, the scaler z = clip(h (norm - mean) / std, -1, 1)",
                            Rule(*ADAFACE_RULES["adaface_h"]), resume=SCHEDULE)
    adaface_t_alpha: float = ours(0.01, "margin = 'adaface': momentum of the running mean and std of the "
                                        "global batch's feature norms (start 20 and 100)",
                                  Rule(*ADAFACE_RULES["adaface_t_alpha"]), resume=SCHEDULE)

    # ---- optimisation and schedule -------------------------------------------------------------
    amp_dtype: str = ours("fp16", "autocast dtype when fp16=True: fp16 (with GradScaler) or bf16",
                          OneOf(tuple(AMP_DTYPES)), resume=SCHEDULE)
    lr_schedule: str = ours("poly", "'poly' (arcface_torch, warm-up then polynomial decay) or "
                                    "'step' (divide by 10 at lr_steps)", OneOf(SCHEDULE_KINDS), resume=SCHEDULE)
    lr_power: float = ours(1.0, "poly decay power: 1 = current arcface_torch, 2 = the model-zoo runs",
                           above(0), resume=SCHEDULE)
    lr_steps: Sequence[int] = ours(
        [], "step schedule: 1-based epochs at whose start lr is divided by 10",
        Rule(_increasing_epochs, "increasing 1-based epoch numbers, e.g. [8, 14, 20, 25]"), resume=SCHEDULE)
    lr_scale_batch: Optional[int] = ours(
        None, "if set, lr is multiplied by total_batch_size / lr_scale_batch",
        Rule(lambda v: v >= 1, "None or a global batch size >= 1"), resume=SCHEDULE)
    clip_grad_norm: float = ours(5.0, "L2 gradient-norm clip on the backbone; 0 disables",
                                 Rule(lambda v: v >= 0, ">= 0 (0 disables clipping)"), resume=SCHEDULE)

    # ---- speed ---------------------------------------------------------------------------------
    compile: bool = ours(False, "torch.compile the student and the teacher forward (in place: checkpoints, "
                                "model.pt and ONNX export are unchanged); docs/speed.md", resume=HARMLESS)
    compile_mode: Optional[str] = ours(
        None, "torch.compile mode when compile=True: None (the default mode), 'reduce-overhead' (CUDA "
              "graphs, for small per-GPU batches), 'max-autotune' or 'max-autotune-no-cudagraphs'",
        OneOf(COMPILE_MODES), resume=HARMLESS)

    # ---- checkpoints and faults ----------------------------------------------------------------
    save_every_steps: int = ours(0, "also checkpoint every N global steps (0 = epoch ends only)",
                                 at_least(0), resume=HARMLESS)
    keep_checkpoints: int = ours(2, "how many complete checkpoint sets to keep", at_least(1), resume=HARMLESS)
    resume_allow_changes: bool = ours(
        False, "resume even though schedule-changing keys (lr, batch_size, world size, ...) differ "
               "from the saved run; the changes are logged", resume=HARMLESS)
    num_image_mismatch: str = ours(
        "stop", "when num_image differs from the data's image count: 'stop' with the count and the fix, or "
                "'warn' and train on with step counts from num_image (arcface_torch's behaviour); synthetic "
                "data is never compared", OneOf(("stop", "warn")), resume=HARMLESS)
    overwrite: bool = ours(
        False, "write into an output folder that holds another kind of output (a dataset, a teacher "
               "cache, ...); its files of the same names are replaced; docs/safety.md", resume=HARMLESS)
    nonfinite_loss: str = ours("stop", "'stop' (diagnostic, keep last good checkpoint) or 'skip' "
                                       "the step", OneOf(("stop", "skip")), resume=HARMLESS)
    device: str = ours("auto", "auto (cuda if available), cuda or cpu", OneOf(("auto", "cuda", "cpu")), resume=HARMLESS)
    progress_bar: Union[str, bool] = ours("auto", "'auto' (only on a terminal), True or False",
                                          OneOf(("auto", True, False)), resume=HARMLESS)
    max_steps: int = ours(0, "stop after this many global steps (0 = run all epochs); for smoke "
                             "tests", at_least(0), resume=HARMLESS)

    # ---- every job config sets these -----------------------------------------------------------
    rec: str = required("dataset folder (train.rec/train.idx, also where the val .bin files are "
                        "looked up), image folder, or 'synthetic'",
                        Rule(bool, "a dataset folder, an image folder or 'synthetic'"), resume=HARMLESS)
    num_classes: int = required("number of identities (checked against the data)", at_least(1), resume=IDENTITY)
    num_image: int = required("number of training images (used for step counts)", at_least(1), resume=SCHEDULE)
    num_epoch: int = required("number of epochs", at_least(1), resume=SCHEDULE)
    warmup_epoch: Union[int, float] = required("warm-up epochs for the poly schedule (0 or "
                                               "negative: none)", resume=SCHEDULE)
    val_targets: Sequence[str] = required(
        "list of .bin basenames looked up in `rec` (may be empty)",
        Rule(lambda v: all(isinstance(t, str) and t for t in v),
             "a list of .bin basenames, e.g. ['lfw', 'cfp_fp', 'agedb_30']"), resume=HARMLESS)

    # ---- computed by the trainer (`derive`) ----------------------------------------------------
    total_batch_size: int = derived("batch_size x world size", resume=SCHEDULE)
    warmup_step: int = derived("num_image // total_batch_size x warmup_epoch", resume=SCHEDULE)
    total_step: int = derived("num_image // total_batch_size x num_epoch (iterations)", resume=SCHEDULE)

    def as_dict(self) -> Dict[str, Any]:
        """Every key and value in declaration order (the host's start-up log order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Key:
    """One key's declaration, as the validator, the `--set` parser and the table read it."""

    name: str
    group: str  # one of GROUPS
    default: Any  # dataclasses.MISSING for required and derived keys
    types: Tuple[type, ...]
    meaning: str
    check: Optional[Check]
    resume: str  # IDENTITY, SCHEDULE or HARMLESS


def _accepted_types(annotation: Any) -> Tuple[type, ...]:
    """`Optional[str]` -> (str, NoneType), `Sequence[int]` -> (list,), `Union[str, float]` -> ..."""
    if typing.get_origin(annotation) is Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _accepted_types(arg))
    if typing.get_origin(annotation) in (list, SequenceABC):
        return (list,)
    return (annotation,)


_HINTS = typing.get_type_hints(RunConfig)
KEYS: Dict[str, Key] = {
    f.name: Key(f.name, default=f.default if f.default_factory is MISSING else f.default_factory(),
                types=_accepted_types(_HINTS[f.name]), **f.metadata)
    for f in fields(RunConfig)}
DEFAULTS: Dict[str, Any] = {k.name: k.default for k in KEYS.values() if k.group in ("host", "extension")}
REQUIRED_KEYS: Tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.group == "required")
DERIVED_KEYS: Tuple[str, ...] = tuple(k.name for k in KEYS.values() if k.group == "derived")

# Keys that only pre-2022 arcface_torch configs have; train_v2 ignores them, we reject them.
HISTORICAL_KEYS: Dict[str, str] = {
    "loss": "the margin comes from margin_list: (1.0, 0.5, 0.0) ArcFace, (1.0, 0.0, 0.4) CosFace",
    "dataset": "the data comes from rec alone",
    "score": "nothing reads it",
}


def known_keys() -> Tuple[str, ...]:
    """Every key a config may hold, in the order the start-up log prints them."""
    return tuple(KEYS)
