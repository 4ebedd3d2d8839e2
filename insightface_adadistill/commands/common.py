"""What several commands share: the `CONFIG [--set KEY=VALUE ...]` arguments and the error line."""
from __future__ import annotations

import argparse
import sys


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `CONFIG [--set KEY=VALUE ...]` arguments every command that reads a config takes."""
    parser.add_argument("config", help="arcface_torch config file (any path) or a recipe name "
                                       "from recipes/, e.g. ms1mv2_r50")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+",
                        action="extend", default=[],
                        help="override config keys, typed by the key: --set lr=0.05 fp16=false "
                             "val_targets=lfw,cfp_fp teacher_weights=None")


def print_error(command: str, message: object) -> None:
    """The one error block every command prints: `adadistill <command>: error: <message>`."""
    print(f"adadistill {command}: error: {message}", file=sys.stderr, flush=True)
