"""arcface_torch-compatible configs: `load_config(path, overrides, world_size)`, the one entry point, loads a
job config file, applies `--set` overrides, validates and returns a frozen `RunConfig`. `defaults.py` declares
every key once; docs/configs.md's tables are generated from the declarations by `config.table`.
"""
from .defaults import KEYS, RunConfig
from .loader import build_run_config, derive, format_config, load_config, parse_overrides, resolve_config_path
from .validate import ConfigError, validate

__all__ = ["ConfigError", "KEYS", "RunConfig", "build_run_config", "derive", "format_config", "load_config",
           "parse_overrides", "resolve_config_path", "validate"]
