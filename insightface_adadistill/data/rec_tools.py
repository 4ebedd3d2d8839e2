"""Build and look inside InsightFace `.rec` files (behind `adadistill make-rec` and `inspect-rec`).

`write_insightface_rec` writes the layout of faces_emore / MS1M (docs/data.md): header record 0 with
labels [A, B], image records 1..A-1 (flag 0, scalar label, id = key), one identity record per class with
[first key, last key + 1), plus the `property` file. JPEG sources are stored byte for byte; other
formats are encoded to JPEG at the given quality.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from .datasets import IMAGE_SIZE, LabelError, check_image_size, detect_layout, scan_labels
from .decode import JPEG_SOI, ImageDecodeError, decode_image, encode_jpeg
from .recordio import IRHeader, RecordIOReader, RecordIOWriter, pack, unpack

_MAX_LISTED_ERRORS = 10
Progress = Callable[[Iterable[Any], int], Iterable[Any]]
"""Wraps a stream of `total` items, e.g. in a progress bar: (items, total) -> the same items."""


class RecSummary(NamedTuple):
    """What `write_insightface_rec` wrote: image count, class count and the header [A, B]."""

    num_images: int
    num_classes: int
    header: tuple[int, int]


def write_insightface_rec(out_dir: str | os.PathLike, samples: Iterable[tuple[int, bytes]],
                          num_classes: int) -> RecSummary:
    """Write `train.rec`, `train.idx` and `property` in the InsightFace layout into `out_dir`
    (created if needed; existing files are replaced).

    `samples` are (label, jpeg_bytes) pairs grouped by label in increasing order 0, 0, 1, 2, 2, ...
    with every label 0..num_classes-1 present (identity records need contiguous groups). They are
    streamed, never held in memory: the header record is written first with placeholder counts and
    rewritten in place at the end.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_keys: list[int] = []  # first image key of each label
    key = 1
    with RecordIOWriter(out_dir / "train.rec") as writer:
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
        first_identity = key
        for identity_key, span in enumerate(zip(first_keys, first_keys[1:] + [key]), start=first_identity):
            writer.write(identity_key, pack(IRHeader(0, list(span), identity_key, 0), b""))
        header = (first_identity, first_identity + num_classes)
        writer.overwrite(0, pack(IRHeader(0, list(header), 0, 1), b""))
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
    return (buf if buf[:2] == JPEG_SOI else encode_jpeg(rgb, quality)), None


def validated_samples(paths: list[Path], labels: np.ndarray, workers: int, quality: int,
                      progress: Optional[Progress] = None) -> Iterator[tuple[int, bytes]]:
    """(label, jpeg) in folder order, read in parallel; raises once at the end listing bad files.

    `progress(results, total)` may wrap the stream of read results (the command shows a bar).
    """
    errors: list[str] = []
    read = partial(read_face, quality=quality)
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:  # exit: terminate
        results = pool.imap(read, paths, chunksize=64) if pool else map(read, paths)
        if progress is not None:
            results = progress(results, len(paths))
        for label, (jpeg, error) in zip(labels.tolist(), results):
            if error is not None:
                errors.append(error)
            elif not errors:  # after the first error nothing more is written; keep scanning to list all
                yield label, jpeg
    if errors:
        listed = "\n  ".join(errors[:_MAX_LISTED_ERRORS])
        unlisted = len(errors) - _MAX_LISTED_ERRORS
        more = f"\n  ... and {unlisted} more" if unlisted > 0 else ""
        raise ValueError(f"{len(errors)} of {len(paths)} images are unusable (nothing was written):\n  "
                         f"{listed}{more}")


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
    labels = (f"{header.label:g}" if header.flag == 0
              else "[" + ", ".join(f"{value:g}" for value in header.label.tolist()) + "]")
    size = "-"
    if payload:
        try:
            rgb = decode_image(payload, f"key {key}")
            size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        except ImageDecodeError:
            size = "undecodable"
    return f"{key:>8}  {header.flag:>4}  {labels:<20}  {len(payload):>9,} B  {size}"


def describe_rec(reader: RecordIOReader, num_records: int) -> list[str]:
    """What `adadistill inspect-rec` prints: file, layout, counts, property and the first records."""
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
