"""`adadistill make-rec` and `adadistill inspect-rec`: build and look inside InsightFace `.rec` files.

make-rec writes the layout of faces_emore / MS1M (spec 4.7): header record 0 with labels [A, B],
image records 1..A-1 (flag 0, scalar label, id = key), one identity record per class with
[first key, last key + 1), plus the `property` file. JPEG sources are stored byte for byte; other
formats are encoded to JPEG at --quality.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, TypeVar

import numpy as np

from .datasets import (IMAGE_SIZE, LabelError, check_image_size, detect_layout, scan_image_folder,
                       scan_labels)
from .decode import ImageDecodeError, decode_image, encode_jpeg
from .recordio import IRHeader, RecordIOReader, RecordIOWriter, pack, unpack

_JPEG_SOI = b"\xff\xd8"
_PROGRESS_SECONDS = 10.0
_MAX_LISTED_ERRORS = 10
T = TypeVar("T")


class RecSummary(NamedTuple):
    """What `write_insightface_rec` wrote: image count, class count and the header [A, B]."""

    num_images: int
    num_classes: int
    header: tuple[int, int]


def write_insightface_rec(out_dir: str | os.PathLike, samples: Iterable[tuple[int, bytes]],
                          num_classes: int) -> RecSummary:
    """Write `train.rec`, `train.idx` and `property` in the InsightFace layout.

    Args:
        out_dir: folder to write to (created if needed; existing files are replaced).
        samples: (label, jpeg_bytes) pairs grouped by label in increasing order 0, 0, 1, 2, 2, ...
            with every label 0..num_classes-1 present (identity records need contiguous groups).
        num_classes: number of identities C.

    The header record is written first with placeholder counts and rewritten in place at the end,
    so the samples are streamed, never held in memory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec_path = out_dir / "train.rec"
    first_keys: list[int] = []  # first image key of each label
    key = 1
    with RecordIOWriter(rec_path) as writer:
        writer.write(0, pack(IRHeader(0, [0.0, 0.0], 0, 1), b""))
        for label, jpeg in samples:
            if label != len(first_keys) - 1:
                if label != len(first_keys):
                    raise LabelError(f"make-rec: image {key} has label {label} after label "
                                     f"{len(first_keys) - 1}; samples must come grouped by label in "
                                     "increasing order with no gaps (0, 0, 1, 2, 2, ...)")
                first_keys.append(key)
            writer.write(key, pack(IRHeader(0, float(label), key, 0), jpeg))
            key += 1
        if len(first_keys) != num_classes:
            raise LabelError(f"make-rec: the samples hold {len(first_keys)} identities but num_classes is "
                             f"{num_classes}; pass num_classes={len(first_keys)}")
        end_keys = first_keys[1:] + [key]
        first_identity = key
        for label, (first, end) in enumerate(zip(first_keys, end_keys)):
            identity_key = first_identity + label
            writer.write(identity_key, pack(IRHeader(0, [float(first), float(end)], identity_key, 0), b""))
        header = (first_identity, first_identity + num_classes)
        writer.overwrite(0, pack(IRHeader(0, [float(header[0]), float(header[1])], 0, 1), b""))
    (out_dir / "property").write_text(f"{num_classes},{IMAGE_SIZE},{IMAGE_SIZE}\n")
    return RecSummary(first_identity - 1, num_classes, header)


def read_face(path: Path, quality: int) -> tuple[bytes, str | None]:
    """Read and validate one aligned face: (JPEG bytes, None) or (b"", error message).

    Runs in the worker pool; errors come back as text so one bad file does not stop the scan.
    """
    try:
        buf = path.read_bytes()
        rgb = decode_image(buf, str(path))
        check_image_size(rgb, str(path))
    except (OSError, ImageDecodeError, ValueError) as exc:
        return b"", str(exc)
    return (buf if buf[:2] == _JPEG_SOI else encode_jpeg(rgb, quality)), None


def _progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """A tqdm bar on a terminal, otherwise a plain line every ~10 s (for logs)."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(items, total=total, desc=what, unit="img")
        return
    started = last = time.monotonic()
    for done, item in enumerate(items, 1):
        now = time.monotonic()
        if now - last >= _PROGRESS_SECONDS:
            rate = done / (now - started)
            print(f"{what}: {done}/{total} images, {rate:.0f} img/s", file=sys.stderr, flush=True)
            last = now
        yield item


def _validated_samples(paths: list[Path], labels: np.ndarray, workers: int,
                       quality: int) -> Iterator[tuple[int, bytes]]:
    """(label, jpeg) in folder order, read in parallel; raises once at the end listing bad files."""
    errors: list[str] = []
    read = partial(read_face, quality=quality)
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(read, paths, chunksize=64) if pool else map(read, paths)
        for label, (jpeg, error) in zip(labels.tolist(), _progress(results, len(paths), "make-rec")):
            if error is not None:
                errors.append(error)
            elif not errors:  # after the first error nothing more is written; keep scanning to list all
                yield label, jpeg
    finally:
        if pool is not None:
            pool.terminate()
    if errors:
        listed = "\n  ".join(errors[:_MAX_LISTED_ERRORS])
        unlisted = len(errors) - _MAX_LISTED_ERRORS
        more = f"\n  ... and {unlisted} more" if unlisted > 0 else ""
        raise ValueError(f"{len(errors)} of {len(paths)} images are unusable (nothing was written):\n  "
                         f"{listed}{more}")


def make_rec_main(argv: list[str] | None = None) -> int:
    """`adadistill make-rec SRC_FOLDER OUT_DIR`: pack aligned 112x112 faces into an InsightFace .rec."""
    parser = argparse.ArgumentParser(
        prog="adadistill make-rec",
        description="Pack a folder of aligned 112x112 faces (one sub-folder per identity, sorted "
                    "names give labels 0..C-1) into OUT_DIR/train.rec, train.idx and property.")
    parser.add_argument("src", type=Path, help="folder with one sub-folder of images per identity")
    parser.add_argument("out_dir", type=Path, help="where train.rec, train.idx and property go")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes reading and checking images (default: all cores)")
    parser.add_argument("--quality", type=int, default=95,
                        help="JPEG quality for non-JPEG sources (JPEGs are stored unchanged)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR/train.rec")
    args = parser.parse_args(argv)
    if (args.out_dir / "train.rec").exists() and not args.force:
        print(f"adadistill make-rec: error: {args.out_dir / 'train.rec'} exists; pass --force to replace it",
              file=sys.stderr)
        return 1
    try:
        classes, paths, labels = scan_image_folder(args.src)
        started = time.monotonic()
        summary = write_insightface_rec(
            args.out_dir, _validated_samples(paths, labels, args.workers, args.quality), len(classes))
    except (OSError, ValueError) as exc:
        print(f"adadistill make-rec: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir / 'train.rec'}: {summary.num_images} images, {summary.num_classes} "
          f"identities, header {list(summary.header)} ({time.monotonic() - started:.1f} s)")
    return 0


def _describe_labels(labels: np.ndarray) -> str:
    if labels.size == 0:
        return "no images"
    if labels.min() < 0:
        return f"negative label {int(labels.min())} (invalid)"
    missing = np.flatnonzero(np.bincount(labels) == 0)
    span = f"ids 0..{int(labels.max())}"
    if missing.size:
        return f"{np.unique(labels).size} ({span}, gaps at {missing[:5].tolist()} - invalid for training)"
    return f"{int(labels.max()) + 1} ({span}, contiguous)"


def _record_row(reader: RecordIOReader, key: int) -> str:
    header, payload = unpack(reader.read(key), f"{reader.rec_path} key {key}")
    if header.flag == 0:
        labels = f"{header.label:g}"
    else:
        labels = "[" + ", ".join(f"{value:g}" for value in header.label.tolist()) + "]"
    size = "-"
    if payload:
        try:
            rgb = decode_image(payload, f"key {key}")
            size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        except ImageDecodeError:
            size = "undecodable"
    return f"{key:>8}  {header.flag:>4}  {labels:<20}  {len(payload):>9,} B  {size}"


def inspect_rec_main(argv: list[str] | None = None) -> int:
    """`adadistill inspect-rec DIR`: layout, counts and the first records of a RecordIO dataset."""
    parser = argparse.ArgumentParser(
        prog="adadistill inspect-rec",
        description="Show the layout (insightface / glint / header-less), image and class counts and "
                    "the first records of DIR/train.rec.")
    parser.add_argument("dir", type=Path, help="dataset folder with train.rec (or the .rec file itself)")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rewrite train.idx by scanning train.rec (keys = record ids)")
    parser.add_argument("-n", "--num-records", type=int, default=5, help="records to list (default 5)")
    args = parser.parse_args(argv)
    rec_path = args.dir if args.dir.suffix == ".rec" else args.dir / "train.rec"
    try:
        if args.rebuild_index:
            count = RecordIOReader.rebuild_index(rec_path)
            print(f"rebuilt {rec_path.with_suffix('.idx')}: {count} records")
        with RecordIOReader(rec_path) as reader:
            print("\n".join(_describe(reader, args.num_records)))
    except (OSError, ValueError) as exc:
        print(f"adadistill inspect-rec: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe(reader: RecordIOReader, num_records: int) -> list[str]:
    layout = detect_layout(reader)
    keys = layout.image_keys
    lines = [f"file:     {reader.rec_path} ({reader.file_size:,} bytes, {len(reader)} records in "
             f"{reader.idx_path.name})"]
    if layout.header is None:
        lines.append(f"layout:   {layout.kind} (no header record; images are all keys in index order)")
        from_header = "-"
    else:
        lines.append(f"layout:   {layout.kind} (header record 0 = {list(layout.header)})")
        from_header = str(layout.header[1] - layout.header[0])
    lines.append(f"images:   {len(keys)}" + (f" (keys 1..{len(keys)})" if layout.header else ""))
    lines.append(f"classes:  {from_header} from header, "
                 f"{_describe_labels(scan_labels(reader, keys))} from labels")
    property_file = reader.rec_path.parent / "property"
    if property_file.is_file():
        lines.append(f"property: {property_file.read_text().strip()}")
    lines.append(f"first {min(num_records, len(reader))} records (index order):")
    lines.append(f"{'key':>8}  {'flag':>4}  {'labels':<20}  {'payload':>11}  image")
    lines += [_record_row(reader, int(key)) for key in reader.keys[:num_records]]
    return lines
