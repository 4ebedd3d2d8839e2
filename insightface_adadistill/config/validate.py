"""Checks a merged config and reports every problem at once, each with its fix.

nanoGPT's rule: an unknown key or a wrong type stops the run before anything is built; beyond types
we refuse values arcface_torch would accept and then fail on (or silently ignore) hours later. Each
key's own check is declared with the key (`defaults.RunConfig`); the rules joining keys live here.
"""
from __future__ import annotations

from typing import Any, Collection, List, Mapping, Sequence, Tuple, Union

from insightface_adadistill.errors import UserError, close_matches
from insightface_adadistill.heads import HEADS, head_name, head_spec, heads_with
from insightface_adadistill.heads.margins import MARGINS
from insightface_adadistill.teacher.kind import needs_network

from .defaults import HISTORICAL_KEYS, KEYS, REQUIRED_KEYS, NoneType, RunConfig


class ConfigError(UserError, ValueError):
    """A config that cannot be trained; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = f"{len(self.problems)} problems" if len(self.problems) > 1 else "1 problem"
        super().__init__(f"{source}: {count}:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return type(self), (self.source, self.problems)


def unknown_key_problem(key: str) -> str:
    """The message for a key we do not know (shared by the file check and `--set`)."""
    if key in HISTORICAL_KEYS:
        return (f"{key!r} is a pre-2022 arcface_torch key that train_v2 ignores; remove it "
                f"({HISTORICAL_KEYS[key]}).")
    close = close_matches(key, KEYS, n=1)
    suggestion = f" Did you mean {close}?" if close else ""
    return (f"unknown key {key!r}.{suggestion} The known keys are listed in docs/configs.md "
            f"and declared in insightface_adadistill/config/defaults.py.")


def type_names(types: Tuple[type, ...]) -> str:
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
    widened = (isinstance(value, int) and float in types) or (isinstance(value, tuple) and list in types)
    return widened or isinstance(value, tuple(t for t in types if t is not bool))


def _choices(names: Sequence[str]) -> str:
    return " or ".join(repr(name) for name in names)


def _head_problems(cfg: Mapping[str, Any]) -> List[str]:
    """What the head `distill` selects needs (its `HeadSpec`), against what the config gives it."""
    problems: List[str] = []
    distill = cfg.get("distill")
    if head_name(distill) not in HEADS:  # `distill`'s own check names the known heads
        return problems
    spec = head_spec(distill)
    if spec.teacher_embeddings:
        weights = cfg.get("teacher_weights")
        needed = [("teacher_weights", "'work_dirs/ms1mv2_r50/model.pt'")]
        if weights is None or needs_network(weights):  # an ONNX teacher knows its own network
            needed.insert(0, ("teacher_network", "'r50'"))
        for key, example in needed:
            if cfg.get(key) is None:
                problems.append(f"distill = {distill!r} needs a teacher: set {key} "
                                f"(e.g. {key} = {example})")
    elif cfg.get("teacher_cache") is not None:
        needs = ("trains against the teacher's classifier and needs no teacher embeddings"
                 if spec.teacher_classifier else "trains without a teacher")
        problems.append(f"teacher_cache = {cfg['teacher_cache']!r} holds teacher embeddings, but distill = "
                        f"{distill!r} {needs}; remove teacher_cache (or --set teacher_cache=None), or "
                        f"use distill = {_choices(heads_with('teacher_embeddings'))}")
    if spec.teacher_classifier and cfg.get("teacher_classifier") is None:
        problems.append(f"distill = {distill!r} trains against the teacher's classifier: set "
                        "teacher_classifier to its checkpoint_gpu_*.pt shards (a list or a glob) "
                        "or a *header.pth file")
    margin = cfg.get("margin", "margin_list")
    if margin in MARGINS and margin not in spec.margins:  # an unknown `margin` is its own key's problem
        problems.append(f"distill = {distill!r} does not take margin = {margin!r}; use margin = "
                        f"{_choices(spec.margins)}")
    return problems


def _cross_key_problems(cfg: Mapping[str, Any]) -> List[str]:
    problems = _head_problems(cfg) + _margin_problems(cfg)
    warmup, epochs = cfg.get("warmup_epoch", 0), cfg.get("num_epoch", 1)
    if cfg.get("lr_schedule") == "poly" and warmup > 0 and warmup >= epochs:
        problems.append(f"warmup_epoch = {warmup!r} must be < num_epoch = {epochs!r}: the poly "
                        f"schedule decays after the warm-up; lower warmup_epoch or use 0")
    if cfg.get("lr_schedule") == "step" and not cfg.get("lr_steps"):
        problems.append("lr_schedule = 'step' needs lr_steps, the 1-based epochs at whose start lr "
                        "is divided by 10 (e.g. lr_steps = [8, 14, 20, 25])")
    return problems


def _margin_problems(cfg: Mapping[str, Any]) -> List[str]:
    """AdaFace keys without the AdaFace margin would be ignored; the host's inter-class filter is a
    feature of its margin_list loss only."""
    if cfg.get("margin") != "adaface":
        return [f"{key} = {cfg[key]!r} is read only with margin = 'adaface'; set margin = 'adaface' "
                f"or remove {key}" for key in ("adaface_m", "adaface_h", "adaface_t_alpha")
                if key in cfg and cfg[key] != KEYS[key].default]
    threshold = cfg.get("interclass_filtering_threshold", 0)
    if threshold > 0:
        return [f"interclass_filtering_threshold = {threshold!r} filters the logits of the margin_list "
                f"margin (arcface_torch's CombinedMarginLoss), not AdaFace's; with margin = 'adaface' "
                f"set it to 0"]
    return []


def validate(cfg: Union[Mapping[str, Any], RunConfig], source: str = "config",
             overridden: Collection[str] = ()) -> None:
    """Raise `ConfigError` listing every problem in `cfg` (merged keys, derived ones allowed, or a
    `RunConfig`), naming `source` and pointing to `--set` for the `overridden` keys; None when it can
    be trained."""
    if isinstance(cfg, RunConfig):
        cfg = cfg.as_dict()

    def where(key: str, problem: str) -> str:
        return f"{problem} (from --set {key}=...)" if key in overridden else problem

    problems = [where(key, unknown_key_problem(key)) for key in cfg if key not in KEYS]
    problems += [f"missing required key {key!r}: {KEYS[key].meaning}" for key in REQUIRED_KEYS if key not in cfg]
    for key, value in cfg.items():
        if key in KEYS and not _has_type(value, KEYS[key].types):
            problems.append(where(key, f"{key} = {value!r} has type {type(value).__name__}; "
                                       f"expected {type_names(KEYS[key].types)}"))
    if problems:  # the checks below assume known keys of the right types
        raise ConfigError(source, problems)

    for key, value in cfg.items():
        check = KEYS[key].check
        if check is None or (value is None and NoneType in KEYS[key].types):
            continue
        problem = check(key, value)
        if problem is not None:
            problems.append(where(key, problem))
    problems += _cross_key_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
