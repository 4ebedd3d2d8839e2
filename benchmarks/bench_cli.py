"""What every benchmark script's command line shares: preset, device, threads, JSON-lines output.

Each script keeps its own presets and measurements; this module only removes the repeated
plumbing around them (argument parsing, picking the preset by device, the one-process group,
and printing every result line as JSON while also appending it to `--out`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from insightface_adadistill import distributed


def add_run_arguments(parser: argparse.ArgumentParser, presets: Mapping[str, Any], gpu_preset: str) -> None:
    """--preset (auto: `gpu_preset` on CUDA, 'cpu' otherwise), --device, --threads and --out."""
    parser.add_argument("--preset", choices=["auto", *presets], default="auto",
                        help=f"auto: '{gpu_preset}' on CUDA, 'cpu' otherwise")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's); 1 is steadier on a "
                        "busy shared machine, where threads wait on each other")
    parser.add_argument("--out", type=Path, help="also write every JSON line to this file")


def chosen_preset(args: argparse.Namespace, presets: Mapping[str, Any], gpu_preset: str, device: torch.device,
                  fields: Sequence[str]) -> Tuple[str, Any]:
    """The named preset (auto: by device) with the command-line values of `fields` that were given."""
    name = args.preset if args.preset != "auto" else (gpu_preset if device.type == "cuda" else "cpu")
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    return name, replace(presets[name], **overrides)


class JsonLines:
    """Prints each result line as JSON and appends it to `--out` at once, so a crash keeps what was measured."""

    def __init__(self, out: Optional[Path]) -> None:
        self.lines: List[Dict[str, Any]] = []
        self._file = out.open("w") if out is not None else None

    def emit(self, line: Dict[str, Any]) -> None:
        self.lines.append(line)
        print(json.dumps(line), flush=True)
        if self._file is not None:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@contextlib.contextmanager
def benchmark_process(args: argparse.Namespace) -> Iterator[Tuple[distributed.DistInfo, JsonLines]]:
    """One process (world size 1, as `adadistill train` on one device) and the script's output lines."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dist = distributed.init_distributed(args.device)
    out = JsonLines(args.out)
    try:
        yield dist, out
    finally:
        distributed.destroy_distributed()
        out.close()
