"""`adadistill inspect-cache DIR [--verify K]`: print a teacher cache's manifest; with `--verify`,
recompute K random rows with the teacher it names and compare them with the stored ones."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from insightface_adadistill.commands.common import command_parser, print_error, process_group

SUMMARY = "print a teacher cache's manifest; --verify K recomputes K rows"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("inspect-cache", "Print a teacher cache's manifest; with --verify K, recompute K "
                                             "random rows with the teacher it names and compare them with the "
                                             "stored ones (exit 1 when they differ).")
    parser.add_argument("folder", type=Path, metavar="DIR", help="cache folder written by `adadistill cache-teacher`")
    parser.add_argument("--verify", type=int, metavar="K", default=0,
                        help="recompute K random rows (both orientations) and compare")
    parser.add_argument("--seed", type=int, default=0, help="which random rows --verify picks")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="where --verify runs the teacher (auto: CUDA when available)")
    return parser


def _verify(cache: Any, count: int, seed: int, device: str) -> Dict[str, Any]:
    """Re-open the dataset and the teacher the manifest names, check both still match, compare rows."""
    import numpy as np

    from insightface_adadistill.cache import TeacherSpec, run_identity, verify_rows
    from insightface_adadistill.cache.manifest import check_manifest
    from insightface_adadistill.data.datasets import build_dataset
    from insightface_adadistill.teacher import build_teacher

    teacher, data = cache.manifest["teacher"], cache.manifest["dataset"]
    spec = TeacherSpec(teacher["network"], teacher["weights"], teacher["embedding_size"],
                       teacher["precision"], teacher["channels_last"])
    dataset = build_dataset(data["rec"], data["num_classes"], data["seed"])
    check_manifest(cache.manifest, run_identity(spec, dataset, data["rec"]), cache.folder)
    with process_group(device) as dist:
        model = build_teacher(spec.network, spec.weights, spec.embedding_size, dist.device,
                              dtype=spec.precision, channels_last=spec.channels_last)
        rows = np.random.default_rng(seed).choice(len(dataset), size=min(count, len(dataset)), replace=False)
        return verify_rows(cache, dataset, model, indices=sorted(rows.tolist()), device=dist.device)


def main(argv: Optional[List[str]] = None) -> int:
    """Exit 0 for a finished cache whose verified rows match, 1 for an unfinished build or rows
    that differ; user errors (a `UserError`) propagate to the command line's one error path."""
    args = build_parser().parse_args(argv)
    from insightface_adadistill.cache import build_progress, open_teacher_cache
    from insightface_adadistill.cache.manifest import MANIFEST

    progress = build_progress(args.folder) if args.folder.is_dir() else None
    if progress is not None and not (args.folder / MANIFEST).is_file():
        print(f"{args.folder}: unfinished build, {progress} committed; rerun `adadistill cache-teacher "
              f"CONFIG --out {args.folder}` to finish it")
        return 1
    cache = open_teacher_cache(args.folder)
    print(json.dumps(cache.manifest, indent=2))
    if args.verify > 0:
        result = _verify(cache, args.verify, args.seed, args.device)
        print(json.dumps({"verify": result}))
        if not result["ok"]:
            return print_error("inspect-cache", f"rows differ from the teacher by {result['max_rel_error']:.2e} "
                               f"(relative), more than the {cache.manifest['dtype']} tolerance "
                               f"{result['tolerance']:.0e}; rebuild the cache")
    return 0
