"""Checks a merged config and reports every problem at once, each with its fix.

nanoGPT's rule: an unknown key or a wrong type stops the run before anything is built. Beyond
types we refuse values arcface_torch would accept and then fail on (or silently ignore) hours
later: a non-positive lr, a margin_list that is neither ArcFace nor CosFace, DALI or wandb switched
on, a distillation run without a teacher.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

from .defaults import HISTORICAL_KEYS, REQUIRED_KEYS, NoneType, expected_types, known_keys


class ConfigError(ValueError):
    """A config that cannot be trained; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = f"{len(self.problems)} problems" if len(self.problems) > 1 else "1 problem"
        super().__init__(f"{source}: {count}:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return type(self), (self.source, self.problems)


def suggest_key(key: str) -> str:
    """' Did you mean 'x'?' for the closest known key, or '' when nothing is close."""
    close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_key_problem(key: str) -> str:
    """The message for a key we do not know (shared by the file check and `--set`)."""
    if key in HISTORICAL_KEYS:
        return (f"{key!r} is a pre-2022 arcface_torch key that train_v2 ignores; remove it "
                f"({HISTORICAL_KEYS[key]}).")
    return (f"unknown key {key!r}.{suggest_key(key)} The known keys are listed in the README "
            f"table 'Config keys' and in insightface_adadistill/config/defaults.py.")


def _type_names(types: Tuple[type, ...]) -> str:
    """'float (or int)', 'str or None', ...: the accepted types as a message names them."""
    names = ["None" if t is NoneType else t.__name__ for t in types]
    if float in types and int not in types:
        names[names.index("float")] = "float (or int)"
    if list in types:
        names[names.index("list")] = "list (or tuple)"
    return " or ".join(names)


def _has_type(value: Any, types: Tuple[type, ...]) -> bool:
    """isinstance with the config's widening rules: bool is not an int, int counts as float,
    tuple counts as list."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    if isinstance(value, tuple) and list in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


# ---- single-key value rules: key -> (is the value fine, what it must be) ---------------------

def _choice(*allowed: Any) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: v in allowed), "one of " + ", ".join(map(repr, allowed))


def _at_least(low: float) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _alpha_ok(value: Any) -> bool:
    if isinstance(value, str):
        return value in ("weighted", "plain")
    return 0.0 < value < 1.0


_VALUE_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "lr": ((lambda v: v > 0), "> 0"),
    "momentum": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "weight_decay": _at_least(0),
    "sample_rate": ((lambda v: 0 <= v <= 1), "in [0, 1] (0 keeps the positive centres only)"),
    "interclass_filtering_threshold": ((lambda v: 0 <= v < 1), "in [0, 1) (0 disables it)"),
    "embedding_size": _at_least(1),
    "batch_size": _at_least(1),
    "gradient_acc": _at_least(1),
    "verbose": _at_least(1),
    "frequent": _at_least(1),
    "num_workers": _at_least(0),
    "num_classes": _at_least(1),
    "num_image": _at_least(1),
    "num_epoch": _at_least(1),
    "network": ((lambda v: bool(v)), "a backbone name such as 'r50' or 'mbf'"),
    "rec": ((lambda v: bool(v)), "a dataset folder, an image folder or 'synthetic'"),
    "optimizer": _choice("sgd", "adamw"),
    "distill": _choice(None, "adadistill", "arcdistill", "feature_kd"),
    "distill_alpha": (_alpha_ok, "'weighted', 'plain' or a float in (0, 1)"),
    "feature_kd_weight": _at_least(0),
    "teacher_dtype": _choice("fp32", "bf16", "fp16"),
    "margin_grad": _choice("straight_through", "exact"),
    "amp_dtype": _choice("fp16", "bf16"),
    "lr_schedule": _choice("poly", "step"),
    "lr_power": ((lambda v: v > 0), "> 0"),
    "lr_scale_batch": ((lambda v: v is None or v >= 1), "None or a global batch size >= 1"),
    "clip_grad_norm": ((lambda v: v >= 0), ">= 0 (0 disables clipping)"),
    "save_every_steps": _at_least(0),
    "keep_checkpoints": _at_least(1),
    "nonfinite_loss": _choice("stop", "skip"),
    "device": _choice("auto", "cuda", "cpu"),
    "progress_bar": _choice("auto", True, False),
    "max_steps": _at_least(0),
}

# Keys whose True value is refused outright: the host feature is not provided.
_REFUSED_SWITCHES: Dict[str, str] = {
    "dali": "DALI is not supported (the PyTorch DataLoader reads the .rec directly); "
            "set dali = False",
    "using_wandb": "wandb is not supported (metrics go to TensorBoard under output/tensorboard); "
                   "set using_wandb = False",
}


def _margin_problem(margins: Any) -> Optional[str]:
    """arcface_torch's CombinedMarginLoss takes exactly two forms; anything else raises there."""
    fix = "use (1.0, m, 0.0) for ArcFace (e.g. m = 0.5) or (1.0, 0.0, m) for CosFace (e.g. m = 0.4)"
    if len(margins) != 3 or not all(_has_type(m, (float,)) for m in margins):
        return f"margin_list = {margins!r} must be 3 numbers (m1, m2, m3); {fix}"
    m1, m2, m3 = margins
    if m1 == 1.0 and m3 == 0.0 and 0.0 <= m2 < math.pi:
        return None
    if m1 == 1.0 and m2 == 0.0 and 0.0 < m3 < 2.0:
        return None
    return (f"margin_list = {margins!r} is neither ArcFace (1, m, 0) with 0 <= m < pi nor "
            f"CosFace (1, 0, m) with 0 < m < 2; {fix}")


def _element_problems(cfg: Mapping[str, Any]) -> List[str]:
    problems = []
    steps = cfg.get("lr_steps", [])
    positive = all(_has_type(s, (int,)) and s >= 1 for s in steps)
    if not positive or list(steps) != sorted(set(steps)):
        problems.append(f"lr_steps = {steps!r} must be increasing 1-based epoch numbers, "
                        f"e.g. [8, 14, 20, 25]")
    targets = cfg.get("val_targets", [])
    if not all(isinstance(t, str) and t for t in targets):
        problems.append(f"val_targets = {targets!r} must be a list of .bin basenames, "
                        f"e.g. ['lfw', 'cfp_fp', 'agedb_30']")
    shards = cfg.get("teacher_classifier")
    paths = [shards] if isinstance(shards, str) else list(shards or [])
    if shards is not None and not (paths and all(isinstance(p, str) and p for p in paths)):
        problems.append(f"teacher_classifier = {shards!r} must be a non-empty list of file paths "
                        f"or one path/glob string")
    return problems


def _cross_key_problems(cfg: Mapping[str, Any]) -> List[str]:
    problems = []
    distill = cfg.get("distill")
    if distill in ("adadistill", "feature_kd"):  # arcdistill needs only the teacher's classifier
        for key, example in (("teacher_network", "'r50'"),
                             ("teacher_weights", "'work_dirs/ms1mv2_r50/model.pt'")):
            if cfg.get(key) is None:
                problems.append(f"distill = {distill!r} needs a teacher: set {key} "
                                f"(e.g. {key} = {example})")
    if distill == "arcdistill" and cfg.get("teacher_classifier") is None:
        problems.append("distill = 'arcdistill' trains against the teacher's classifier: set "
                        "teacher_classifier to its checkpoint_gpu_*.pt shards (a list or a glob) "
                        "or a *header.pth file")
    warmup, epochs = cfg.get("warmup_epoch", 0), cfg.get("num_epoch", 1)
    if cfg.get("lr_schedule") == "poly" and warmup > 0 and warmup >= epochs:
        problems.append(f"warmup_epoch = {warmup!r} must be < num_epoch = {epochs!r}: the poly "
                        f"schedule decays after the warm-up; lower warmup_epoch or use 0")
    if cfg.get("lr_schedule") == "step" and not cfg.get("lr_steps"):
        problems.append("lr_schedule = 'step' needs lr_steps, the 1-based epochs at whose start lr "
                        "is divided by 10 (e.g. lr_steps = [8, 14, 20, 25])")
    return problems


def validate(cfg: Mapping[str, Any], source: str = "config",
             overridden: Collection[str] = ()) -> None:
    """Raise `ConfigError` listing every problem in `cfg`; return None when it can be trained.

    Args:
        cfg: the merged config (defaults, file, overrides; derived keys may be present).
        source: the config file, named in the error.
        overridden: keys that came from `--set`, so their messages point there instead.
    """
    def where(key: str, problem: str) -> str:
        return f"{problem} (from --set {key}=...)" if key in overridden else problem

    known = set(known_keys())
    problems = [where(key, unknown_key_problem(key)) for key in cfg if key not in known]
    problems += [f"missing required key {key!r}: {meaning}"
                 for key, meaning in REQUIRED_KEYS.items() if key not in cfg]
    for key, value in cfg.items():
        if key in known and not _has_type(value, expected_types(key)):
            problems.append(where(key, f"{key} = {value!r} has type {type(value).__name__}; "
                                       f"expected {_type_names(expected_types(key))}"))
    if problems:  # the value rules below assume known keys of the right types
        raise ConfigError(source, problems)

    for key, (ok, must_be) in _VALUE_RULES.items():
        if key in cfg and not ok(cfg[key]):
            problems.append(where(key, f"{key} = {cfg[key]!r} must be {must_be}"))
    for key, reason in _REFUSED_SWITCHES.items():
        if cfg.get(key):
            problems.append(where(key, f"{key} = True: {reason}"))
    margin = _margin_problem(cfg["margin_list"]) if "margin_list" in cfg else None
    problems += [where("margin_list", margin)] if margin else []
    problems += _element_problems(cfg) + _cross_key_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
