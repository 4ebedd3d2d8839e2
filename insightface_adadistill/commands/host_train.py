"""`adadistill host-train ARCFACE_TORCH_DIR CONFIG [--set key=value ...]`: distil inside your own
arcface_torch checkout, running its unchanged train_v2.py (see docs/host-train.md).

Launch several processes as the host does: `torchrun --nproc_per_node=8 -m insightface_adadistill
host-train ARCFACE_TORCH_DIR CONFIG`.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from insightface_adadistill.commands.common import add_config_arguments, print_error

SUMMARY = "run your own arcface_torch checkout's train_v2.py with our distillation head"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adadistill host-train",
                                     description=f"{SUMMARY}; see docs/host-train.md")
    parser.add_argument("checkout", metavar="ARCFACE_TORCH_DIR",
                        help="your arcface_torch folder (the one holding train_v2.py)")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the host's train_v2.py with our head registered; 2 on a checkout or config problem."""
    args = build_parser().parse_args(argv)
    from insightface_adadistill.config import ConfigError
    from insightface_adadistill.host import HostCheckoutError, run_host_training

    try:
        run_host_training(args.checkout, args.config, args.overrides,
                          world_size=int(os.environ.get("WORLD_SIZE", "1")))  # set by torchrun
    except (HostCheckoutError, ConfigError) as err:
        print_error("host-train", err)
        return 2
    return 0
