"""`adadistill host-train ARCFACE_TORCH_DIR CONFIG [--set key=value ...]`: distil inside your own
arcface_torch checkout, running its unchanged train_v2.py, also under torchrun (docs/host-train.md)."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from insightface_adadistill.commands.common import add_config_arguments, command_parser, parse_config_args

SUMMARY = "run your own arcface_torch checkout's train_v2.py with our distillation head"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("host-train", "Run your own arcface_torch checkout's train_v2.py, unchanged, with "
                                          "our distillation head registered into it; see docs/host-train.md.")
    parser.add_argument("checkout", metavar="ARCFACE_TORCH_DIR",
                        help="your arcface_torch folder (the one holding train_v2.py)")
    add_config_arguments(parser)
    parser.add_argument("--compatible-lr-scheduler", action="store_true",
                        help="upstream lr_scheduler.py passes verbose= to LRScheduler.__init__, which torch "
                             ">= 2.7 rejects: ignore it for this run only instead of stopping (your files "
                             "are not edited)")
    parser.usage = f"{parser.prog} ARCFACE_TORCH_DIR CONFIG [--set KEY=VALUE ...] [--compatible-lr-scheduler]"
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the host's train_v2.py with our head registered (a checkout or config problem is a user error)."""
    args = parse_config_args(build_parser(), argv)
    from insightface_adadistill.host import run_host_training

    run_host_training(args.checkout, args.config, args.overrides,
                      world_size=int(os.environ.get("WORLD_SIZE", "1")),  # set by torchrun
                      compatible_lr_scheduler=args.compatible_lr_scheduler)
    return 0
