"""`adadistill inspect-rec DIR`: layout, counts and the first records of a RecordIO dataset."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import command_parser, print_error

SUMMARY = "print the layout, counts and first records of a .rec"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("inspect-rec", "Show the layout (insightface / glint / header-less), image and class "
                                           "counts and the first records of DIR/train.rec.")
    parser.add_argument("dir", type=Path, metavar="DIR", help="dataset folder with train.rec (or the .rec file itself)")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rewrite train.idx by scanning train.rec (keys = record ids)")
    parser.add_argument("--overwrite", action="store_true", help="with --rebuild-index: replace an existing train.idx")
    parser.add_argument("-n", "--num-records", type=int, default=5, metavar="N", help="records to list")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from insightface_adadistill.data.rec_tools import describe_rec
    from insightface_adadistill.data.recordio import RecordIOReader
    from insightface_adadistill.outputs import claim_file

    rec_path = args.dir if args.dir.suffix == ".rec" else args.dir / "train.rec"
    if args.rebuild_index and rec_path.is_file():  # a refusal is a user error (exit 2), before anything is read
        claim_file(rec_path.with_suffix(".idx"), "inspect-rec", overwrite=args.overwrite, example=None)
    try:
        if args.rebuild_index:
            count = RecordIOReader.rebuild_index(rec_path)
            print(f"rebuilt {rec_path.with_suffix('.idx')}: {count} records")
        with RecordIOReader(rec_path) as reader:
            print("\n".join(describe_rec(reader, args.num_records)))
    except (OSError, ValueError) as exc:
        return print_error("inspect-rec", exc)
    return 0
