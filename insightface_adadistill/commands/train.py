"""`adadistill train CONFIG [--set key=value ...]`: arcface_torch's training loop, plus distillation;
one process or many under torchrun run the same code."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from insightface_adadistill.commands.common import (add_config_arguments, command_parser, parse_config_args,
                                                    process_group)

SUMMARY = "train or distil from an arcface_torch config (1 process, or under torchrun)"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("train", "Train or distil from an arcface_torch config: one process on the CPU "
                                     "(gloo) or one GPU (nccl), or N processes with `torchrun "
                                     "--nproc_per_node=N -m insightface_adadistill train CONFIG`.")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `adadistill train` and `torchrun -m insightface_adadistill train`."""
    args = parse_config_args(build_parser(), argv)
    from insightface_adadistill.config import load_config
    from insightface_adadistill.training.train import train

    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun; the derived keys need it
    cfg = load_config(args.config, args.overrides, world_size=world_size)
    with process_group(cfg.device) as dist:
        train(cfg, dist)
    return 0
