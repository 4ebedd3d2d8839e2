"""`adadistill export-onnx OUT.onnx --network N --model M`: a trained backbone as an ONNX file, checked
against PyTorch with onnxruntime before the command succeeds (an unfaithful file is removed)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import add_embedding_size, command_parser, print_error

SUMMARY = "export a backbone to ONNX for the insightface runtime"
COMMAND = "export-onnx"


def build_parser() -> argparse.ArgumentParser:
    from insightface_adadistill.export.onnx import DEFAULT_OPSET

    parser = command_parser(COMMAND, "Export a trained backbone to ONNX for insightface and the ICCV21-MFR "
                                     "checker, then check the file against PyTorch with onnxruntime.")
    parser.add_argument("output", metavar="OUT.onnx", type=Path, help="the ONNX file to write")
    parser.add_argument("--network", required=True, help="backbone name, e.g. r50, mbf, mfn")
    parser.add_argument("--model", required=True, type=Path,
                        help="weights: model.pt, backbone.pth or checkpoint_gpu_*.pt")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help="ONNX opset")
    add_embedding_size(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.onnx")
    return parser


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through links or `..`); a missing path is no file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def main(argv: Optional[List[str]] = None) -> int:
    """Export, verify with onnxruntime, print a summary; exit 1 with a message on any failure."""
    args = build_parser().parse_args(argv)
    if _same_file(args.output, args.model):
        return print_error(COMMAND, f"OUT.onnx {args.output} is the --model weights file; refusing to overwrite "
                                    f"the weights: give another output, e.g. {args.model.with_suffix('.onnx')}")
    from insightface_adadistill.backbones.loading import load_backbone
    from insightface_adadistill.export.onnx import (ExportError, check_exportable, describe_export, export_onnx,
                                                    verify_onnx)
    from insightface_adadistill.outputs import claim_file

    claim_file(args.output, COMMAND, overwrite=args.overwrite, example="model.onnx")
    # written and checked beside OUT.onnx, then renamed over it: a failed export leaves OUT.onnx as it was
    draft = args.output.with_name(f".{args.output.name}.{os.getpid()}.draft.onnx")
    try:
        try:
            check_exportable(args.network)
            backbone = load_backbone(args.network, args.model, args.embedding_size, fp16=False, dropout=0.0)
            export_onnx(backbone, draft, opset=args.opset)
        except (FileNotFoundError, ValueError, ExportError) as exc:
            return print_error(COMMAND, exc)
        try:
            parity = verify_onnx(backbone, draft)
        except ExportError as exc:  # an unfaithful file must not be deployed by a script that ignores the exit code
            return print_error(COMMAND, f"{exc}; {args.output} was not written")
        os.replace(draft, args.output)
    finally:
        draft.unlink(missing_ok=True)
    print(f"exported {args.network} ({args.model}) -> {args.output}")
    print("\n".join(describe_export(args.output, args.opset, parity)))
    return 0
