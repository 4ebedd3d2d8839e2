"""`adadistill demo [--out DIR] [--device auto|cpu|cuda] [--preset auto|quick|cpu|gpu]`: one command from
nothing to a results table (the stages are in `demo/`)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import command_parser, count, process_group

SUMMARY = "synthetic identities -> teacher, student, AdaDistill student -> report"


def build_parser() -> argparse.ArgumentParser:
    from insightface_adadistill.demo.presets import PRESETS

    parser = command_parser("demo", "From nothing to a results table: synthetic identities -> a teacher, a "
                                    "standalone student and an AdaDistill (alpha') student with identical "
                                    "budgets -> verification accuracy and IJB-style TAR@FAR of all three -> "
                                    "DIR/report.md with plots, and the TensorBoard logs.")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                        help="output folder (a new one, or one an earlier demo wrote)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else the CPU")
    parser.add_argument("--preset", default="auto", choices=("auto", *PRESETS),
                        help="auto: gpu when CUDA is available and allowed by --device, else cpu; "
                             "quick: a seconds-long smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every run")
    parser.add_argument("--max-steps", type=count, default=None, metavar="N",
                        help="stop every run after N steps (a smoke test of a preset; default: the preset's full "
                             "schedule)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds other files (the demo's own names are replaced)")
    return parser


def print_stage(number: int, text: str) -> None:
    print(f"\n[demo {number}/4] {text}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; returns 0 and prints where the report is."""
    args = build_parser().parse_args(argv)
    import torch

    from insightface_adadistill.demo.presets import pick_preset
    from insightface_adadistill.demo.run import demo_output, run_pipeline, write_outputs

    started = time.perf_counter()
    preset = pick_preset(args.preset, args.device)
    with demo_output(args.out, args.overwrite) as out:  # OutputFolderError for a folder the demo did not write
        with process_group(args.device) as dist:
            outcome = run_pipeline(preset, out, dist, seed=args.seed, device=args.device,
                                   max_steps=args.max_steps, on_stage=print_stage)
        print_stage(4, "writing the report")
        meta = {"device": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu",
                "seed": args.seed, "total_seconds": time.perf_counter() - started}
        files = write_outputs(preset, out, outcome, meta)
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s.")
    print(f"  report:      {files['report']}")
    print(f"  plots:       {files['alpha_curves']}, {files['roc']}")
    print(f"  TensorBoard: tensorboard --logdir {out / 'runs'}")
    return 0
