"""`adadistill convert-host-checkpoint OUTPUT`: make an arcface_torch run resumable by our trainer."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import command_parser

SUMMARY = "turn an arcface_torch output folder's checkpoint_gpu_*.pt into a set `resume=True` continues"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("convert-host-checkpoint",
                            "Build OUTPUT/checkpoints/step_*/ from the checkpoint_gpu_{rank}.pt files that "
                            "arcface_torch wrote into OUTPUT (save_all_states=True); then train with "
                            "--set output=OUTPUT resume=True to continue that run from its last epoch end.")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="the arcface_torch output folder")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Refusals (no host files, a set already there, a folder in use) are `UserError`s for cli.py."""
    args = build_parser().parse_args(argv)
    from insightface_adadistill.outputs import claim_output
    from insightface_adadistill.training.checkpoint import convert_host_checkpoint

    with claim_output(args.output, "convert-host-checkpoint", resume=True):  # not while a run trains in it
        set_dir = convert_host_checkpoint(args.output)
    print(f"wrote {set_dir}; continue the run with: adadistill train CONFIG --set output={args.output} "
          "resume=True")
    return 0
