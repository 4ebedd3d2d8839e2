"""`adadistill eval-ijb`: IJB-B / IJB-C 1:1 verification of one model (arcface_torch `eval_ijbc.py`)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from insightface_adadistill.commands.common import add_embedding_size, command_parser, count, pick_device
from insightface_adadistill.errors import InputNotFoundError
from insightface_adadistill.outputs import OutputFolderError

SUMMARY = "IJB-B / IJB-C 1:1 verification (TAR@FAR)"


def build_parser() -> argparse.ArgumentParser:
    from insightface_adadistill.evaluation.ijb_meta import TARGETS

    parser = command_parser("eval-ijb", "IJB-B / IJB-C 1:1 verification (arcface_torch eval_ijbc.py protocol) "
                                        "of one model: backbone weights or an ONNX file.")
    parser.add_argument("--model-prefix", help="backbone weights (model.pt / backbone.pth / "
                                               "checkpoint_gpu_0.pt); needs --network")
    parser.add_argument("--network", help="backbone name, e.g. r50, r100, mbf")
    add_embedding_size(parser)
    parser.add_argument("--onnx", metavar="PATH", help="evaluate this ONNX model instead of "
                                                       "--model-prefix/--network")
    parser.add_argument("--image-path", required=True, metavar="DIR", help="IJB root holding meta/ and loose_crop/")
    parser.add_argument("--target", default="IJBC", choices=TARGETS, help="which IJB set DIR holds")
    parser.add_argument("--result-dir", default=".", metavar="DIR", help="outputs go to <result-dir>/<job>/")
    parser.add_argument("--job", help="output sub-folder and method label (default: from the model file, "
                                      "<its folder>_<its name>, e.g. student_model for runs/student/model.pt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of another model in <result-dir>/<job>/")
    parser.add_argument("--batch-size", type=count, default=128, metavar="N",
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


def default_job(model: str | os.PathLike) -> str:
    """One results folder per model file: `<its folder>_<its name>` (runs/student/model.pt ->
    student_model), so that evaluating two runs' model.pt never writes into one folder."""
    path = Path(model).resolve()
    parts = [part for part in (path.parent.name, path.stem) if part]
    return "_".join(parts).replace(" ", "_")


def _only_this_model(folder: Path, target: str, model: Dict[str, str]) -> None:
    """Refuse a results folder that holds this target's results of another model file."""
    previous = folder / f"{target.lower()}.json"
    if not previous.is_file():
        return
    try:
        saved = json.loads(previous.read_text())
    except ValueError:
        saved = {}
    if saved.get("model_sha256") != model["model_sha256"]:
        other = saved.get("model") or saved.get("onnx") or "another model"
        raise OutputFolderError(f"{folder} already holds the {target} results of {other} ({previous}); choose "
                                "another --job (the default is one per model file), or pass --overwrite to "
                                "replace them")


def main(argv: Optional[List[str]] = None) -> int:
    """Evaluate one model on IJB-B or IJB-C, write the results and print the TAR@FAR table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.onnx is None and (args.model_prefix is None or args.network is None):
        parser.error("give --model-prefix and --network, or --onnx")
    if args.onnx is not None and args.model_prefix is not None:
        parser.error("--onnx and --model-prefix are exclusive: evaluate one model per run")
    from insightface_adadistill.backbones.loading import load_backbone
    from insightface_adadistill.cache.manifest import file_sha256
    from insightface_adadistill.evaluation.ijb import backbone_embedder, evaluate_ijb, onnx_embedder, write_results
    from insightface_adadistill.outputs import claim_output, staged

    device = pick_device(args.device)
    model_file = args.onnx if args.onnx is not None else args.model_prefix
    if not Path(model_file).is_file():
        flag = "--onnx" if args.onnx is not None else "--model-prefix"
        what = "is a folder, not a model file" if Path(model_file).is_dir() else "not found"
        raise InputNotFoundError(f"{flag} {model_file}: {what}; give the model file (e.g. model.pt or model.onnx)")
    job = args.job or default_job(model_file)
    model = ({"onnx": str(args.onnx)} if args.onnx is not None
             else {"network": args.network, "model": str(args.model_prefix)})
    model["model_sha256"] = file_sha256(model_file)
    folder = Path(args.result_dir) / job
    check = None if args.overwrite else (lambda _: _only_this_model(folder, args.target, model))
    with claim_output(folder, "eval-ijb", overwrite=args.overwrite, check=check):
        if args.onnx is not None:
            embed_fn = onnx_embedder(args.onnx, device)
        else:
            embed_fn = backbone_embedder(load_backbone(args.network, args.model_prefix, args.embedding_size), device)
        result = evaluate_ijb(embed_fn, args.image_path, args.target, batch_size=args.batch_size,
                              workers=args.workers, flip=not args.no_flip,
                              norm_score=not args.no_norm_score,
                              detector_score=not args.no_detector_score)
        with staged(folder) as stage:
            written = write_results(result, stage, job, model)
            table = written["txt"].read_text()
    print(table, end="")
    print(f"{result['mode']}, AUC {result['auc'] * 100:.4f} %, results in {folder}", flush=True)
    return 0
