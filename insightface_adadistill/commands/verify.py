"""`adadistill verify BIN... --network N --model M`: 10-fold accuracy on `.bin` verification sets."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from insightface_adadistill.commands.common import add_embedding_size, command_parser, count, pick_device

SUMMARY = "10-fold accuracy on .bin verification sets"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("verify", "10-fold verification accuracy (arcface_torch protocol) on .bin sets.")
    parser.add_argument("bins", nargs="+", metavar="BIN", help="lfw.bin, cfp_fp.bin, agedb_30.bin, ...")
    parser.add_argument("--network", required=True, help="backbone name, e.g. r50 or mbf")
    parser.add_argument("--model", required=True,
                        help="model.pt / backbone.pth / checkpoint_gpu_0.pt with the backbone weights")
    add_embedding_size(parser)
    parser.add_argument("--batch-size", type=count, default=64, metavar="N",
                        help="images per forward pass (their mirror images take a second pass)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the results as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Print `name: accuracy ± std, XNorm` per set; optionally write JSON."""
    args = build_parser().parse_args(argv)
    from insightface_adadistill.backbones.loading import load_backbone
    from insightface_adadistill.evaluation.verification import VerificationSet, evaluate_backbone
    from insightface_adadistill.outputs import claim_file
    from insightface_adadistill.serialization import write_json_atomic

    if args.json is not None:  # refused before the evaluation, not after it
        claim_file(args.json, "verify", overwrite=args.overwrite, example="verify.json")
    device = pick_device(args.device)
    backbone = load_backbone(args.network, args.model, args.embedding_size).to(device)
    results: Dict[str, Dict[str, float]] = {}
    for path in args.bins:
        vset = VerificationSet.load(path)
        result = evaluate_backbone(backbone, vset, args.batch_size, device)
        results[vset.name] = {"pairs": int(vset.issame.shape[0]), **result}
        print(f"{vset.name}: {result['accuracy']:.5f} ± {result['std']:.5f}, "
              f"XNorm {result['xnorm']:.4f}", flush=True)
    if args.json is not None:
        write_json_atomic({"network": args.network, "model": str(args.model), "sets": results}, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
