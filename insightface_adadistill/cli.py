"""`adadistill <command> ...`: dispatches to each command's `main(argv)`; holds no logic itself."""
from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Dict, List, Optional

from insightface_adadistill.commands import (check_onnx, config, demo, eval_ijb, export_onnx, inspect_rec,
                                             make_rec, make_synthetic, train, verify)

# command name -> module with `SUMMARY` and `main(argv) -> int`; the modules import torch only in main
COMMANDS: Dict[str, ModuleType] = {
    "train": train,
    "config": config,
    "demo": demo,
    "verify": verify,
    "eval-ijb": eval_ijb,
    "export-onnx": export_onnx,
    "check-onnx": check_onnx,
    "make-rec": make_rec,
    "make-synthetic": make_synthetic,
    "inspect-rec": inspect_rec,
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: adadistill <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {module.SUMMARY}" for name, module in COMMANDS.items()]
    lines += ["", "`adadistill <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    # Before torch loads OpenMP: spinning threads of two processes on few cores slow both 20-30x.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adadistill: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return int(COMMANDS[name].main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
