"""`adadistill config CONFIG [--set ...] [--world-size N]`: print the merged, validated config in the
host's log format (a `ConfigError` lists the problems; `adadistill` shows it and exits 2)."""
from __future__ import annotations

import argparse
from typing import List, Optional

from insightface_adadistill.commands.common import add_config_arguments, command_parser, count, parse_config_args

SUMMARY = "print the merged, validated config with its derived keys"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("config", "Print the merged, validated config with its derived keys, in the "
                                      "host's log format; a config with problems lists them all and exits 2.")
    add_config_arguments(parser)
    parser.add_argument("--world-size", type=count, default=1,
                        help="number of training processes, for the derived keys")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_config_args(build_parser(), argv)
    from insightface_adadistill.config import format_config, load_config

    cfg = load_config(args.config, args.overrides, world_size=args.world_size)
    print("\n".join(format_config(cfg)))
    return 0
