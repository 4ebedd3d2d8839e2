"""`adadistill config CONFIG [--set ...] [--world-size N]`: print the merged, validated config in the
host's log format, or the problems and exit status 2."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from insightface_adadistill.commands.common import add_config_arguments

SUMMARY = "print the merged, validated config with its derived keys"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adadistill config", description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--world-size", type=int, default=1,
                        help="number of training processes, for the derived keys (default 1)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from insightface_adadistill.config import ConfigError, format_config, load_config

    try:
        cfg = load_config(args.config, args.overrides, world_size=args.world_size)
    except ConfigError as exc:
        print(f"adadistill config: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_config(cfg)))
    return 0
