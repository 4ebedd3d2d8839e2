"""arcface_torch-compatible configs: load a job config file, apply `--set` overrides, validate.

`load_config(path, overrides, world_size)` is the one entry point and returns a frozen
`RunConfig`; `defaults.py` declares every key once (default, types, check, meaning), and the
checks read the library's own choices (backbone and head registries, optimizer kinds, precisions).
The tables in docs/configs.md are generated from the declarations by `config.table`.
"""
from .defaults import KEYS, RunConfig
from .loader import build_run_config, derive, format_config, load_config, parse_overrides, resolve_config_path
from .validate import ConfigError, validate

__all__ = ["ConfigError", "KEYS", "RunConfig", "build_run_config", "derive", "format_config", "load_config",
           "parse_overrides", "resolve_config_path", "validate"]
