"""`adadistill check-onnx MODEL_OR_DIR`: the ICCV21-MFR submission checks on an exported model.

Prints the rule table; exits 0 when every enforced rule passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import command_parser, print_error

SUMMARY = "ICCV21-MFR submission checks on an ONNX model"


def build_parser() -> argparse.ArgumentParser:
    from insightface_adadistill.export.mfr_check import TRACKS

    parser = command_parser("check-onnx", "Check an exported face-recognition ONNX model against the ICCV21-MFR "
                                          "submission rules.")
    parser.add_argument("model", metavar="MODEL_OR_DIR", type=Path,
                        help="a .onnx file, or a folder whose lexicographically last *.onnx is checked")
    parser.add_argument("--track", choices=sorted(TRACKS), default="cfat", help="MFR track limits")
    parser.add_argument("--provider", choices=("default", "cpu"), default="default",
                        help="onnxruntime provider: default = its preferred one (the default), cpu = the CPU")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the report as JSON to OUT")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from insightface_adadistill.export.mfr_check import check_onnx, format_table
    from insightface_adadistill.outputs import claim_file
    from insightface_adadistill.serialization import write_json_atomic

    if args.json is not None:
        claim_file(args.json, "check-onnx", overwrite=args.overwrite, example="mfr_check.json")
    try:
        report = check_onnx(args.model, track=args.track, provider=args.provider)
    except FileNotFoundError as exc:
        return print_error("check-onnx", exc)
    print(f"checking {report.model} (track {report.track}, provider {report.provider})")
    print(format_table(report))
    print("PASS: all MFR rules hold" if report.passed else f"FAIL: {', '.join(report.failed_rules())}")
    if args.json is not None:
        write_json_atomic(report.to_json(), args.json)
    return 0 if report.passed else 1
