"""arcface_torch-compatible configs: load a job config file, apply `--set` overrides, validate.

`load_config(path, overrides, world_size)` is the one entry point; `defaults.py` declares every
key once. The package imports nothing outside `easydict` and the standard library.
"""
from .defaults import config_table_markdown
from .loader import derive, format_config, load_config, parse_overrides, resolve_config_path
from .validate import ConfigError, validate

__all__ = [
    "ConfigError",
    "config_table_markdown",
    "derive",
    "format_config",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
    "validate",
]
