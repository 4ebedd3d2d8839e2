"""`adadistill eval-ijb`: IJB-B / IJB-C 1:1 verification of one model (arcface_torch `eval_ijbc.py`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import command_parser

SUMMARY = "IJB-B / IJB-C 1:1 verification (TAR@FAR)"


def build_parser() -> argparse.ArgumentParser:
    from insightface_adadistill.evaluation.ijb_meta import TARGETS

    parser = command_parser("eval-ijb", "IJB-B / IJB-C 1:1 verification (arcface_torch eval_ijbc.py protocol) "
                                        "of one model: backbone weights or an ONNX file.")
    parser.add_argument("--model-prefix", help="backbone weights (model.pt / backbone.pth / "
                                               "checkpoint_gpu_0.pt); needs --network")
    parser.add_argument("--network", help="backbone name, e.g. r50, r100, mbf")
    parser.add_argument("--embedding-size", type=int, metavar="E",
                        help="num_features the model was trained with (default: read from the weights; "
                             "a value the weights do not have is an error)")
    parser.add_argument("--onnx", metavar="PATH", help="evaluate this ONNX model instead of "
                                                       "--model-prefix/--network")
    parser.add_argument("--image-path", required=True, metavar="DIR", help="IJB root holding meta/ and loose_crop/")
    parser.add_argument("--target", default="IJBC", choices=TARGETS, help="which IJB set DIR holds")
    parser.add_argument("--result-dir", default=".", metavar="DIR", help="outputs go to <result-dir>/<job>/")
    parser.add_argument("--job", default="insightface", help="output sub-folder and method label")
    parser.add_argument("--batch-size", type=int, default=128, metavar="N",
                        help="images per batch (the model sees twice that with the flip)")
    parser.add_argument("--no-flip", action="store_true", help="F0: no flip test")
    parser.add_argument("--no-norm-score", action="store_true",
                        help="N0: L2-normalise each image embedding before pooling")
    parser.add_argument("--no-detector-score", action="store_true",
                        help="D0: do not weight images by their faceness score")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="image decoding/alignment processes (0 = in the main process; default: 4 or "
                             "the number of cores when fewer)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    return parser


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.onnx is None and (args.model_prefix is None or args.network is None):
        parser.error("give --model-prefix and --network, or --onnx")
    if args.onnx is not None and args.model_prefix is not None:
        parser.error("--onnx and --model-prefix are exclusive: evaluate one model per run")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Evaluate one model on IJB-B or IJB-C, write the results and print the TAR@FAR table."""
    args = _parse_args(argv)
    import torch

    from insightface_adadistill.backbones.loading import load_backbone
    from insightface_adadistill.evaluation.ijb import backbone_embedder, evaluate_ijb, onnx_embedder, write_results

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.onnx is not None:
        embed_fn, model = onnx_embedder(args.onnx, device), {"onnx": str(args.onnx)}
    else:
        backbone = load_backbone(args.network, args.model_prefix, args.embedding_size)
        embed_fn = backbone_embedder(backbone, device)
        model = {"network": args.network, "model": str(args.model_prefix)}
    result = evaluate_ijb(embed_fn, args.image_path, args.target, batch_size=args.batch_size,
                          workers=args.workers, flip=not args.no_flip,
                          norm_score=not args.no_norm_score,
                          detector_score=not args.no_detector_score)
    paths = write_results(result, Path(args.result_dir) / args.job, args.job, model)
    print(paths["txt"].read_text(), end="")
    print(f"{result['mode']}, AUC {result['auc'] * 100:.4f} %, results in {paths['json'].parent}",
          flush=True)
    return 0
