"""Open a teacher cache for training, refusing one that is incomplete, truncated or for another run."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from insightface_adadistill.cache.manifest import MANIFEST, CacheError, check_manifest, read_manifest
from insightface_adadistill.cache.store import (
    ARRAY, BUILD, DTYPES, RowFile, array_bytes, check_dtype, chunk_count, pending_chunks, read_array_header)

_REBUILD = "rerun `adadistill cache-teacher CONFIG --out {folder}` to finish it"


@dataclasses.dataclass
class TeacherCache:
    """An opened, checked cache: its manifest and row access (`rows.read(index, flipped)`)."""

    folder: Path
    manifest: Dict[str, Any]
    rows: RowFile


def build_progress(folder: Path) -> Optional[str]:
    """'k of K chunks' of an unfinished build in `folder`, None when there is none."""
    path = folder / BUILD
    if not path.is_file():
        return None
    build = json.loads(path.read_text())
    return f"{chunk_count(build) - len(pending_chunks(folder, build))} of {chunk_count(build)} chunks"


def open_teacher_cache(folder: str | os.PathLike, expected: Optional[Mapping[str, Any]] = None) -> TeacherCache:
    """Open `folder` (written by `adadistill cache-teacher`) after checking it completely.

    Args:
        folder: the cache folder (`manifest.json` + `embeddings.npy`).
        expected: the run's identity in manifest form (`teacher`, `dataset`, `flip`; see
            `manifest.check_manifest`); None skips the match (inspection).

    Raises:
        CacheError: no such folder, missing manifest (or a build that never finished), a newer
            format version, rows not all written, an array whose shape or dtype disagrees with the
            manifest, a truncated array, or a manifest that does not match `expected`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CacheError(f"teacher_cache {folder} does not exist; build it with `adadistill cache-teacher "
                         f"CONFIG --out {folder}`")
    if not (folder / MANIFEST).is_file():
        if (progress := build_progress(folder)) is not None:
            raise CacheError(f"{folder}: the cache build stopped after {progress}; "
                             + _REBUILD.format(folder=folder))
        raise CacheError(f"{folder}: no {MANIFEST}, so this is not a finished teacher cache; build it with "
                         f"`adadistill cache-teacher CONFIG --out {folder}`")
    manifest = read_manifest(folder)
    shape = tuple(manifest["shape"])
    if manifest.get("rows_written") != shape[0]:
        raise CacheError(f"{folder / MANIFEST}: {manifest.get('rows_written')} of {shape[0]} rows written; "
                         + _REBUILD.format(folder=folder))
    dtype = check_dtype(manifest["dtype"])
    path = folder / ARRAY
    found_shape, found_dtype, offset = read_array_header(path)
    if found_shape != shape or found_dtype != DTYPES[dtype][0]:
        raise CacheError(f"{path}: array is {found_shape} {found_dtype}, the manifest says {shape} {dtype}; "
                         "the files come from different builds - rebuild the cache")
    needed, size = offset + array_bytes(shape, dtype), path.stat().st_size
    if size < needed:
        raise CacheError(f"{path}: truncated ({size} bytes, {needed} expected for {shape} {dtype}); "
                         f"rebuild the cache with `adadistill cache-teacher CONFIG --out {folder}`")
    if expected is not None:
        check_manifest(manifest, expected, folder)
    return TeacherCache(folder, manifest, RowFile(path, shape=shape, dtype=dtype, offset=offset))
