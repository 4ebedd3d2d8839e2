"""`adadistill <command> ...`: dispatches to each command's `main(argv)`; holds no logic itself."""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Dict, List, Optional, Tuple

# command: (module, function, one-line help)
COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "train": ("insightface_adadistill.training.train", "main",
              "train or distil from an arcface_torch config (1 process, or under torchrun)"),
    "config": ("insightface_adadistill.config.loader", "config_main",
               "print the merged, validated config with its derived keys"),
    "demo": ("insightface_adadistill.demo", "main",
             "synthetic identities -> teacher, student, AdaDistill student -> report"),
    "verify": ("insightface_adadistill.evaluation.verification", "verify_main",
               "10-fold accuracy on .bin verification sets"),
    "eval-ijb": ("insightface_adadistill.evaluation.ijb", "ijb_main",
                 "IJB-B / IJB-C 1:1 verification (TAR@FAR)"),
    "export-onnx": ("insightface_adadistill.export.onnx", "main",
                    "export a backbone to ONNX for the insightface runtime"),
    "check-onnx": ("insightface_adadistill.export.mfr_check", "main",
                   "ICCV21-MFR submission checks on an ONNX model"),
    "make-rec": ("insightface_adadistill.data.rec_tools", "make_rec_main",
                 "build an insightface-style .rec/.idx from an image folder"),
    "make-synthetic": ("insightface_adadistill.synthetic.suite", "make_synthetic_main",
                       "write the built-in synthetic identities as .rec, .bin and an IJB folder"),
    "inspect-rec": ("insightface_adadistill.data.rec_tools", "inspect_rec_main",
                    "print the layout, counts and first records of a .rec"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: adadistill <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`adadistill <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adadistill: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    return int(getattr(import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
