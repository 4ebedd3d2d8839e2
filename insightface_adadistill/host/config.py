"""One config file for both sides: the host's job config, with our distillation keys in it.

The host merges the job config over its own `configs/base.py`; we validate the same file (and the
`--set` overrides) with our loader, so an unknown or mistyped key is still our clear error. Keys
whose meaning belongs to the host are not judged by us: `network` (the checkout may have its own
backbones), `dali` and `using_wandb` (the host has them). Our loop-only keys (schedules, clipping,
checkpoint cadence, ...) are refused when set, because the host's loop would silently ignore them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from easydict import EasyDict

from insightface_adadistill.config import KEYS, ConfigError, build_run_config, parse_overrides, resolve_config_path
from insightface_adadistill.config.loader import read_config_file

# Our keys host-train reads; every other key we add belongs to `adadistill train`'s own loop.
BRIDGE_KEYS = ("distill", "distill_alpha", "feature_kd_weight", "teacher_network", "teacher_weights",
               "teacher_classifier", "teacher_dtype", "teacher_channels_last", "margin", "adaface_m", "adaface_h",
               "adaface_t_alpha")
# Keys the host decides about: validated with these stand-ins, passed to the host as written.
HOST_JUDGED: Dict[str, Any] = {"network": "r50", "dali": False, "using_wandb": False}


@dataclass(frozen=True)
class DistillSettings:
    """What the registered pieces need beyond the host's own constructor arguments.

    `distill` None with `margin` 'adaface' is a standalone head with our AdaFace margin (the host's
    own Partial FC cannot pass it the feature norms).
    """

    distill: Optional[str]
    alpha: Union[str, float]
    feature_kd_weight: float
    teacher_network: Optional[str]
    teacher_weights: Optional[str]
    teacher_classifier: Optional[Union[str, List[str]]]
    teacher_dtype: str
    teacher_channels_last: bool
    seed: int
    embedding_size: int
    num_classes: int
    margin: str = "margin_list"
    adaface: Tuple[float, float, float] = (0.4, 0.333, 0.01)  # adaface_m, adaface_h, adaface_t_alpha


@dataclass(frozen=True)
class HostRun:
    """A validated host-train job.

    `job_config` is the file's `config` with the `--set` values applied, exactly what the host merges
    over its `configs/base.py`, imported as `configs.<config_name>` (the host's default output folder
    is `work_dirs/<config_name>`). `distill` is None when the config sets neither `distill` nor
    `margin = 'adaface'`: the host then runs as it is. `source` is the config file, for messages.
    """

    source: str
    config_name: str
    job_config: EasyDict
    distill: Optional[DistillSettings]


def loop_only_problems(job: Dict[str, Any]) -> List[str]:
    """Our keys that only `adadistill train` honours, set to a non-default value in `job`."""
    return [f"{key.name} = {job[key.name]!r}: host-train runs your train_v2.py, whose loop does not read "
            f"{key.name}; remove it, or train with `adadistill train`, which honours it"
            for key in KEYS.values()
            if key.group == "extension" and key.name not in BRIDGE_KEYS and key.name in job
            and job[key.name] != key.default]


def load_host_config(path: Union[str, os.PathLike], overrides: Optional[List[str]] = None,
                     world_size: int = 1) -> HostRun:
    """Validate `path` + `--set` overrides with our loader and build the job the host imports.

    Raises:
        ConfigError: an unknown or mistyped key, a bad value, a distillation without its teacher,
            one of our loop-only keys set (see `loop_only_problems`), or a file named base.py.
    """
    file = resolve_config_path(path)
    if file.stem == "base":
        raise ConfigError(str(file), ["a job config named base.py would replace the host's configs/base.py, "
                                      "over which train_v2.py merges it; rename the file"])
    typed = parse_overrides(overrides, source=str(file))
    job = {**read_config_file(file), **typed}
    if problems := loop_only_problems(job):
        raise ConfigError(str(file), problems)
    cfg = build_run_config({**job, **HOST_JUDGED}, world_size, config_name=file.stem, source=str(file),
                           overridden=typed)
    distill = None if cfg.distill is None and cfg.margin == "margin_list" else DistillSettings(
        cfg.distill, cfg.distill_alpha, cfg.feature_kd_weight, cfg.teacher_network, cfg.teacher_weights,
        cfg.teacher_classifier, cfg.teacher_dtype, cfg.teacher_channels_last, cfg.seed, cfg.embedding_size,
        cfg.num_classes, cfg.margin, (cfg.adaface_m, cfg.adaface_h, cfg.adaface_t_alpha))
    return HostRun(source=str(file), config_name=file.stem, job_config=EasyDict(job), distill=distill)

