"""What a teacher cache claims to hold, and the check that it matches a run (docs/teacher-cache.md).

`manifest.json` names the teacher (network, sha256 of its weight file, embedding size, precision,
channels_last), the dataset (kind, image count, a hash of the `.idx` or of the folder listing), the
storage dtype, the flip convention and how many rows are written. It is written last, once every
row is on disk, so a manifest never claims rows that are not there.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import insightface_adadistill as package
from insightface_adadistill.data.datasets import FaceDataset, ImageFolderDataset, RecordDataset, SyntheticDataset
from insightface_adadistill.errors import UserError
from insightface_adadistill.teacher import resolve_onnx_teacher
from insightface_adadistill.teacher.onnx_teacher import is_onnx_teacher

FORMAT = "adadistill-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Row layout: [:, 0] = teacher(x), [:, 1] = teacher(x mirrored along W), where x is the
# normalised (3, 112, 112) image of `FaceDataset.load_image`; training picks column `flipped`.
FLIP_CONVENTION = "hflip-width/v1"
_REBUILD = ("rebuild it with `adadistill cache-teacher CONFIG --out NEW_DIR` and point teacher_cache "
            "there, or set teacher_cache to the cache built for this {what}")
# Fields that must equal the run's, with what a mismatch is about (in the fix `_REBUILD` gives).
CHECKED_FIELDS = {
    "teacher.network": "teacher", "teacher.weights_sha256": "teacher",
    "teacher.embedding_size": "teacher", "dataset.kind": "dataset", "dataset.images": "dataset",
    "dataset.content_sha256": "dataset", "flip": "flip convention",
}


class CacheError(UserError, ValueError):
    """A teacher cache that cannot serve this run (or cannot be built); the message gives the fix."""


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """The teacher a cache is built from: what `build_teacher` receives."""

    network: Optional[str]
    weights: str
    embedding_size: int
    precision: str = "fp32"
    channels_last: bool = False

    def identity(self) -> Dict[str, Any]:
        """The manifest's `teacher` entry; hashing the weight file is what ties rows to weights
        (for an ONNX teacher or an insightface pack: the recognition `.onnx` file it resolves to)."""
        weights = resolve_onnx_teacher(self.weights) if is_onnx_teacher(self.weights) else self.weights
        return {"network": self.network, "weights": str(self.weights),
                "weights_sha256": file_sha256(weights), "embedding_size": self.embedding_size,
                "precision": self.precision, "channels_last": self.channels_last}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks once per process for a given file state: a run hashes
    its teacher for resume, the run's fingerprint and the cache check, which must not each re-read
    a file of hundreds of MB."""
    try:
        stat = os.stat(path)
        return _sha256_of(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError as exc:
        raise CacheError(f"teacher weights {path} not found; check teacher_weights") from exc
    except IsADirectoryError as exc:
        raise CacheError(f"teacher weights {path} is a folder, not a weights file; name the file inside it "
                         f"(e.g. {Path(path) / 'model.pt'}) in teacher_weights") from exc


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """The hash of `path` as it is in that (inode, size, mtime) state: a rewritten file is read again."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_identity(dataset: FaceDataset, rec: str) -> Dict[str, Any]:
    """The manifest's `dataset` entry: kind, image count and a content hash.

    RecordIO: sha256 of `train.idx` (every record's key and offset) plus the `.rec` size; image
    folder: sha256 of the sorted relative paths and file sizes; synthetic: its seed and classes.
    The path is recorded but not compared, so a copy on another node's mount matches.
    """
    if isinstance(dataset, RecordDataset):
        digest = hashlib.sha256(Path(dataset.reader.idx_path).read_bytes())
        digest.update(str(dataset.reader.file_size).encode())
        kind, hashed = "rec", "train.idx + .rec size"
    elif isinstance(dataset, ImageFolderDataset):
        digest = hashlib.sha256()
        for path in dataset.paths:
            digest.update(f"{path.relative_to(dataset.root)}\t{path.stat().st_size}\n".encode())
        kind, hashed = "folder", "sorted relative paths + sizes"
    elif isinstance(dataset, SyntheticDataset):
        digest = hashlib.sha256(f"synthetic seed={dataset.seed} classes={dataset.num_classes_found}".encode())
        kind, hashed = "synthetic", "seed + classes"
    else:
        raise CacheError(f"teacher caches cover RecordIO, image-folder and synthetic datasets, not "
                         f"{type(dataset).__name__}")
    return {"kind": kind, "rec": rec, "images": len(dataset), "num_classes": dataset.num_classes_found,
            "seed": dataset.seed, "content_sha256": digest.hexdigest(), "hash_of": hashed}


def content_identity(dataset: FaceDataset, rec: str, *, teacher: Optional[TeacherSpec],
                     cache: Optional[str]) -> Dict[str, Optional[str]]:
    """What a training run is made of, by content, for resume to compare: the sha256 of the teacher
    weight file, of the teacher cache's manifest and of the dataset (`dataset_identity`). A missing
    file gets None: the teacher loader or the cache check names it next."""
    manifest = Path(cache) / MANIFEST if cache else None
    weights = teacher is not None and Path(teacher.weights).exists()
    return {"teacher_weights_sha256": teacher.identity()["weights_sha256"] if weights else None,
            "teacher_cache_sha256": file_sha256(manifest) if manifest and manifest.is_file() else None,
            "rec_sha256": dataset_identity(dataset, rec)["content_sha256"]}


def run_identity(teacher: TeacherSpec, dataset: FaceDataset, rec: str) -> Dict[str, Any]:
    """What a run needs a cache to match, in manifest form (`teacher`, `dataset`, `flip`)."""
    return {"teacher": teacher.identity(), "dataset": dataset_identity(dataset, rec), "flip": FLIP_CONVENTION}


def new_manifest(identity: Mapping[str, Any], dtype: str, build_batch_size: int) -> Dict[str, Any]:
    """A manifest for `run_identity(...)` with no rows written yet (set when the build commits)."""
    shape = [identity["dataset"]["images"], 2, identity["teacher"]["embedding_size"]]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": package.__version__,
            **identity, "dtype": dtype, "shape": shape, "build_batch_size": build_batch_size,
            "rows_written": 0}


def field(manifest: Mapping[str, Any], dotted: str) -> Any:
    """manifest['teacher']['network'] for 'teacher.network'; None where absent."""
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def mismatches(found: Mapping[str, Any], expected: Mapping[str, Any], fields: List[str]) -> List[str]:
    """One line per field of `fields` whose values differ: the field and both values."""
    return [f"{name}: cache has {field(found, name)!r}, this run has {field(expected, name)!r}"
            for name in fields if field(found, name) != field(expected, name)]


def check_manifest(manifest: Mapping[str, Any], expected: Mapping[str, Any], folder: Path) -> None:
    """Raise `CacheError` unless every `CHECKED_FIELDS` field of `manifest` equals that of `expected`
    (the run's identity in manifest form), reporting all mismatches at once, each with both values."""
    wrong = [name for name in CHECKED_FIELDS if field(manifest, name) != field(expected, name)]
    if wrong:
        what = " and ".join(sorted({CHECKED_FIELDS[name] for name in wrong}))
        raise CacheError(f"{folder / MANIFEST}: this cache does not match the run:\n  "
                         + "\n  ".join(mismatches(manifest, expected, wrong)) + "\n" + _REBUILD.format(what=what))


def read_manifest(folder: Path) -> Dict[str, Any]:
    """Parse `folder/manifest.json` and check its format version (newer versions are refused)."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: not valid JSON ({exc}); rebuild the cache with `adadistill "
                         "cache-teacher`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: not a teacher-cache manifest (format {field(manifest, 'format')!r}, "
                         f"expected {FORMAT!r}); point teacher_cache at a folder written by "
                         "`adadistill cache-teacher`")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CacheError(f"{path}: format_version {version!r} is newer than this insightface-adadistill "
                         f"({package.__version__}) reads ({FORMAT_VERSION}); upgrade the package or "
                         "rebuild the cache with this version")
    return manifest
