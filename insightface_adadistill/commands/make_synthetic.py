"""`adadistill make-synthetic OUT_DIR`: write a synthetic train.rec, synth_val.bin and IJB folder."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List, Optional

from insightface_adadistill.commands.common import command_parser, print_error

SUMMARY = "write the built-in synthetic identities as .rec, .bin and an IJB folder"


def build_parser() -> argparse.ArgumentParser:
    from insightface_adadistill.evaluation.ijb_meta import TARGETS

    parser = command_parser("make-synthetic", "Render procedural face identities into OUT_DIR/train (train.rec, "
                                              "train.idx, property, synth_val.bin), OUT_DIR/<target> (IJB layout) "
                                              "and OUT_DIR/manifest.json; docs/synthetic.md.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the dataset (created)")
    parser.add_argument("--train-ids", type=int, default=200, metavar="N", help="training identities (classes)")
    parser.add_argument("--images-per-id", type=int, default=20, metavar="N", help="training images per identity")
    parser.add_argument("--heldout-ids", type=int, default=100, metavar="N",
                        help="unseen identities for synth_val.bin and the IJB folder")
    parser.add_argument("--val-pairs", type=int, default=1000, metavar="N", help="pairs in synth_val.bin")
    parser.add_argument("--difficulty", default="medium", choices=("easy", "medium", "hard"),
                        help="preset of identity similarity, nuisance and occlusion (docs/synthetic.md)")
    parser.add_argument("--target", default="IJBC", choices=TARGETS, help="layout of the IJB folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identities and the images")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the train/, <target>/ and manifest.json already in OUT_DIR")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from insightface_adadistill.outputs import claim_output, staged
    from insightface_adadistill.synthetic.identities import SyntheticFaceConfig
    from insightface_adadistill.synthetic.suite import build_synthetic_suite, suite_paths

    started = time.monotonic()
    paths = suite_paths(args.out_dir, args.target)
    replaces = [path.name for name, path in paths.items() if name in ("rec", "ijb", "manifest")]
    with claim_output(args.out_dir, "make-synthetic", overwrite=args.overwrite, replaces=replaces):
        try:
            with staged(args.out_dir) as stage:  # a failed build leaves OUT_DIR as it was
                staged_paths = build_synthetic_suite(
                    stage, args.train_ids, args.images_per_id, args.heldout_ids, args.seed,
                    config=SyntheticFaceConfig.difficulty(args.difficulty), num_val_pairs=args.val_pairs,
                    ijb_target=args.target)
                written = json.loads(Path(staged_paths["manifest"]).read_text())["written"]
        except (OSError, ValueError) as exc:
            return print_error("make-synthetic", exc)
    print(f"wrote {args.out_dir} in {time.monotonic() - started:.1f} s")
    for name, counts in written.items():
        print(f"  {name}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    print(f"train with rec={str(paths['rec'])!r} val_targets=['synth_val']; evaluate IJB with "
          f"--image-path {paths['ijb']} --target {args.target}")
    return 0
