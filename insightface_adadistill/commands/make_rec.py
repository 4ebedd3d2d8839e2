"""`adadistill make-rec SRC_FOLDER OUT_DIR`: pack aligned 112x112 faces into an InsightFace .rec."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, TypeVar

from insightface_adadistill.commands.common import command_parser, count, print_error

SUMMARY = "build an insightface-style .rec/.idx from an image folder"
PROGRESS_SECONDS = 10.0
REC_FILES = ("train.rec", "train.idx", "property")
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("make-rec", "Pack a folder of aligned 112x112 faces (one sub-folder per identity, "
                                        "sorted names give labels 0..C-1) into OUT_DIR/train.rec, train.idx "
                                        "and property.")
    parser.add_argument("src", type=Path, metavar="SRC_FOLDER",
                        help="folder with one sub-folder of images per identity")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where train.rec, train.idx and property go")
    parser.add_argument("--workers", type=count, default=os.cpu_count() or 1, metavar="N",
                        help="processes reading and checking images (default: all cores)")
    parser.add_argument("--quality", type=int, default=95, metavar="Q",
                        help="JPEG quality for non-JPEG sources (JPEGs are stored unchanged)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT_DIR/train.rec, train.idx and property")
    return parser


def progress(items: Iterable[T], total: int) -> Iterator[T]:
    """A tqdm bar on a terminal, otherwise a plain line every ~10 s (for logs)."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(items, total=total, desc="make-rec", unit="img")
        return
    started = last = time.monotonic()
    for done, item in enumerate(items, 1):
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            print(f"make-rec: {done}/{total} images, {done / (now - started):.0f} img/s", file=sys.stderr, flush=True)
            last = now
        yield item


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from insightface_adadistill.data.datasets import scan_image_folder
    from insightface_adadistill.data.rec_tools import validated_samples, write_insightface_rec
    from insightface_adadistill.outputs import claim_output, staged

    with claim_output(args.out_dir, "make-rec", overwrite=args.overwrite, replaces=REC_FILES):
        try:
            classes, paths, labels = scan_image_folder(args.src)
            started = time.monotonic()
            samples = validated_samples(paths, labels, args.workers, args.quality, progress)
            with staged(args.out_dir) as stage:  # all three files appear together, or none
                summary = write_insightface_rec(stage, samples, len(classes))
        except (OSError, ValueError) as exc:
            return print_error("make-rec", exc)
    print(f"wrote {args.out_dir / 'train.rec'}: {summary.num_images} images, {summary.num_classes} "
          f"identities, header {list(summary.header)} ({time.monotonic() - started:.1f} s)")
    return 0
