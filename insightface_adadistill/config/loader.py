"""Loads an arcface_torch config file as `utils/utils_config.get_config` does, from anywhere.

As the host: the file is Python building an EasyDict named `config`, merged shallowly over the
`configs/base.py` keys; `output = None` becomes `work_dirs/<config name>`; `total_batch_size`,
`warmup_step` and `total_step` are added. Unlike it: the file is executed by path (no `configs`
package), the base keys are built in (`defaults.py`), a bare recipe name is looked up in `recipes/`,
`--set` overrides apply after the file, and the validated result is a frozen `RunConfig`.
See docs/configs.md.
"""
from __future__ import annotations

import ast
import copy
import os
import runpy
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Union

from insightface_adadistill.errors import close_matches

from .defaults import DEFAULTS, DERIVED_KEYS, KEYS, NoneType, RunConfig
from .validate import ConfigError, unknown_key_problem, validate

Overrides = Union[List[str], Mapping[str, Any], None]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def resolve_config_path(path: Union[str, os.PathLike]) -> Path:
    """A config file from a path (with or without `.py`, as the host accepts) or a recipe name.

    A bare name (no folder part) that is not a file in the working directory is looked up in
    `recipes/` beside the package, so `ms1mv2_r50` means `recipes/ms1mv2_r50.py`.
    """
    given = Path(path)
    candidates = [given, given.with_name(given.name + ".py")]
    shipped = Path(__file__).resolve().parents[2] / "recipes"  # in a source checkout or an editable install
    if len(given.parts) == 1:
        candidates += [shipped / given.name, shipped / (given.name + ".py")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    close = close_matches(given.stem, sorted(p.stem for p in shipped.glob("*.py")))
    hint = f" Did you mean {close}?" if close else ""
    where = f"; shipped recipes are in {shipped}" if shipped.is_dir() else ""
    if given.is_dir():
        raise ConfigError(str(path), [f"is a folder, not a config file; name the .py file{where}"])
    raise ConfigError(str(path), [f"no such config file or recipe name{where}.{hint}"])


def read_config_file(path: Path) -> Dict[str, Any]:
    """Execute an arcface_torch config file and return its `config` mapping (not yet merged)."""
    try:
        namespace = runpy.run_path(str(path), run_name=f"adadistill_config_{path.stem}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "configs":
            raise ConfigError(str(path), [
                f"the file imports {exc.name!r}; job configs are executed standalone and the "
                f"configs/base.py keys are built in, so remove that import and set only the keys "
                f"that differ"]) from exc
        raise ConfigError(str(path), [f"importing {exc.name!r} failed: {exc}"]) from exc
    except Exception as exc:  # a user's file can raise anything; name it and keep the traceback
        raise ConfigError(str(path), [f"executing the file raised {type(exc).__name__}: {exc}"]) from exc
    config = namespace.get("config")
    if not isinstance(config, Mapping):
        raise ConfigError(str(path), [
            "the file must build an EasyDict named `config` (from easydict import EasyDict as "
            "edict; config = edict(); config.network = 'r50'; ...)"])
    return dict(config)


def parse_override_value(key: str, text: str) -> Any:
    """Type a `--set key=value` string by what `key` accepts.

    The text goes through `ast.literal_eval`, falling back to the raw string. Then: 'None' is None;
    true/false/yes/no/on/off/1/0 become bools for bool keys; pure string keys keep the raw text
    (so `--set wandb_key=123` stays a string); `a,b,c` or a single item becomes a list for list
    keys; ints become floats for float keys.
    """
    types = KEYS[key].types
    text = text.strip()
    if text == "None":
        return None
    value = _literal_or_text(text)
    if bool in types and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    if set(types) <= {str, NoneType} and not isinstance(value, str):
        return text
    if list in types and str not in types and isinstance(value, str):
        value = [_literal_or_text(item) for item in value.split(",") if item.strip()]
    return coerce_value(key, value)


def _literal_or_text(item: str) -> Any:
    """`ast.literal_eval` of the stripped text, or that text itself when it is no literal."""
    try:
        return ast.literal_eval(item.strip())
    except (ValueError, SyntaxError):
        return item.strip()


def coerce_value(key: str, value: Any) -> Any:
    """Widen a Python value to what `key` holds: tuple -> list, scalar -> [scalar] for list keys,
    int -> float for float keys. Anything else is left for `validate` to judge."""
    types = KEYS[key].types
    if list in types and isinstance(value, tuple):
        return list(value)
    if list in types and str not in types and not isinstance(value, (list, NoneType)):
        return [value]
    if float in types and int not in types and type(value) is int:
        return float(value)
    return value


def parse_overrides(overrides: Overrides, source: str = "config") -> Dict[str, Any]:
    """`['lr=0.05', 'fp16=false']` or `{'lr': 0.05}` -> typed `{key: value}`; unknown keys raise."""
    if not overrides:
        return {}
    from_text = not isinstance(overrides, Mapping)
    if not from_text:
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(source, [f"--set {item!r} is not key=value (e.g. --set lr=0.05); "
                                           f"put the CONFIG argument before --set"])
            pairs.append((key.strip(), text))
    problems = [f"--set {key}: " + unknown_key_problem(key) for key, _ in pairs if key not in KEYS]
    problems += [f"--set {key}: {key} is computed by the trainer, not set" for key, _ in pairs
                 if key in DERIVED_KEYS]
    if problems:
        raise ConfigError(source, problems)
    typed = parse_override_value if from_text else coerce_value
    return {key: typed(key, value) for key, value in pairs}


def derive(cfg: Mapping[str, Any], world_size: int, config_name: str,
           source: str = "config") -> Dict[str, Any]:
    """The keys computed from the others, as arcface_torch computes them (pure; `cfg` is unchanged).

    output = work_dirs/<config_name> when None (the host's `get_config`);
    total_batch_size = batch_size * world_size; warmup_step = num_image // total_batch_size *
    warmup_epoch; total_step = num_image // total_batch_size * num_epoch (`train_v2`). Like the
    host, steps count iterations and ignore gradient_acc.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    total_batch_size = cfg["batch_size"] * world_size
    steps_per_epoch = cfg["num_image"] // total_batch_size
    if steps_per_epoch < 1:
        raise ConfigError(source, [
            f"num_image = {cfg['num_image']} is smaller than one global batch (batch_size "
            f"{cfg['batch_size']} x world size {world_size} = {total_batch_size}), so an epoch "
            f"has no step; lower batch_size or check num_image"])
    output = cfg.get("output")
    return {"output": os.path.join("work_dirs", config_name) if output is None else output,
            "total_batch_size": total_batch_size,
            "warmup_step": int(steps_per_epoch * cfg["warmup_epoch"]),
            "total_step": steps_per_epoch * cfg["num_epoch"]}


def build_run_config(keys: Mapping[str, Any], world_size: int = 1, config_name: str = "config",
                     source: str = "config", overridden: Collection[str] = ()) -> RunConfig:
    """Merge `keys` (a job config's, as Python values) over the defaults, validate, derive and
    freeze: `load_config` without a file. Messages name `source`, and point to `--set` for the
    `overridden` keys; `output = None` becomes `work_dirs/<config_name>`."""
    derived = [key for key in keys if key in DERIVED_KEYS]
    if derived:
        raise ConfigError(source, [
            f"{key} is computed by the trainer (total_batch_size = batch_size x world size; "
            f"warmup_step and total_step from num_image); remove it from the config"
            for key in derived])
    merged = {**copy.deepcopy(DEFAULTS), **keys}  # shallow, as the host: top-level keys only
    validate(merged, source=source, overridden=overridden)
    return RunConfig(**{**merged, **derive(merged, world_size, config_name, source)})


def load_config(path: Union[str, os.PathLike], overrides: Overrides = None,
                world_size: int = 1) -> RunConfig:
    """Load, merge, override, validate and derive an arcface_torch config (`path`: a file anywhere or
    a recipe name; `overrides`: `--set` strings typed by the key, or a dict of Python values;
    `world_size`: training processes, for the derived keys) into the frozen `RunConfig`."""
    file = resolve_config_path(path)
    from_file = read_config_file(file)
    from_set = parse_overrides(overrides, source=str(file))
    return build_run_config({**from_file, **from_set}, world_size, config_name=file.stem,
                            source=str(file), overridden=from_set)


def format_config(cfg: Union[RunConfig, Mapping[str, Any]]) -> List[str]:
    """The host's start-up lines: ': ' + key padded with spaces to 25 characters + value.

    A key of 25 or more characters gets no space (`interclass_filtering_threshold0`).
    """
    items = cfg.as_dict() if isinstance(cfg, RunConfig) else cfg
    return [": " + key + " " * (25 - len(key)) + str(value) for key, value in items.items()]
