"""`adadistill cache-teacher CONFIG`: the cache of teacher embeddings `teacher_cache = DIR` trains from.

Runs on one process or under `torchrun`; rerunning the same command resumes an interrupted build.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

from insightface_adadistill.commands.common import (add_config_arguments, command_parser, count, parse_config_args,
                                                    process_group)

SUMMARY = "embed every training image (plain and mirrored) with the teacher, once"
DTYPES = ("fp32", "fp16", "bf16")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("cache-teacher", "Embed every training image of the config's rec, plain and "
                                             "mirrored, with the config's teacher, once; train from the cache "
                                             "with --set teacher_cache=DIR (docs/teacher-cache.md). Rerunning "
                                             "the same command resumes an interrupted build.")
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="cache folder (default: the config's teacher_cache, else <output>_teacher_cache)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="row storage: fp32 (exact), fp16 or bf16 (half the disk; deviation in "
                             "docs/teacher-cache.md)")
    parser.add_argument("--batch-size", type=count, metavar="N",
                        help="images per teacher forward (default: the config's batch_size, which "
                             "makes fp32 rows bit-identical to the online teacher's)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Build (or finish) the teacher cache of a config; user errors (a `UserError`) propagate to
    the command line's one error path."""
    args = parse_config_args(build_parser(), argv)
    from insightface_adadistill.cache import CacheError, TeacherSpec
    from insightface_adadistill.config import load_config
    from insightface_adadistill.outputs import claim_output

    cfg = load_config(args.config, args.overrides, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if not cfg.teacher_weights:
        raise CacheError(f"{args.config}: cache-teacher needs the teacher: set teacher_network and "
                         "teacher_weights (e.g. --set teacher_network=r50 teacher_weights=model.pt)")
    # the config's teacher_cache (so that the same config then trains from it), else beside the run's output
    folder = args.out or Path(cfg.teacher_cache if cfg.teacher_cache is not None
                              else f"{str(cfg.output).rstrip('/')}_teacher_cache")
    spec = TeacherSpec(cfg.teacher_network, cfg.teacher_weights, cfg.embedding_size,
                       cfg.teacher_dtype, cfg.teacher_channels_last)
    main_process = int(os.environ.get("RANK", "0")) == 0  # it holds the folder for every process (torchrun)
    with claim_output(folder, "cache-teacher", resume=True) if main_process else contextlib.nullcontext():
        return _build(cfg, folder, spec, args)


def _build(cfg: Any, folder: Path, spec: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from insightface_adadistill.cache import build_teacher_cache
    from insightface_adadistill.cache.store import array_bytes
    from insightface_adadistill.data.datasets import build_dataset
    from insightface_adadistill.training.monitor import resolve_progress_bar

    with process_group(cfg.device) as dist:
        dataset = build_dataset(cfg.rec, cfg.num_classes, cfg.seed)
        bar = tqdm(total=0, unit="img", desc="teacher cache", file=sys.stderr,
                   disable=not (dist.is_main and resolve_progress_bar(cfg.progress_bar, sys.stderr)))
        done = [0]

        def progress(rows: int, todo: int) -> None:
            bar.total = todo
            bar.update(rows - done[0])
            done[0] = rows

        started = time.perf_counter()
        manifest = build_teacher_cache(folder, dataset, spec, rec=cfg.rec, dtype=args.dtype,
                                       batch_size=args.batch_size or cfg.batch_size, dist=dist,
                                       num_workers=cfg.num_workers, progress=progress)
        seconds = time.perf_counter() - started
        bar.close()
    if dist.is_main:
        size = array_bytes(manifest["shape"], manifest["dtype"]) / 2 ** 30
        rate = f", {done[0] * dist.world_size / seconds:.0f} images/s" if done[0] else " (already complete)"
        print(f"{folder}: {manifest['rows_written']} images x 2 orientations x {manifest['shape'][2]} "
              f"{manifest['dtype']} = {size:.3f} GiB{rate}; train with --set teacher_cache={folder}")
    return 0
