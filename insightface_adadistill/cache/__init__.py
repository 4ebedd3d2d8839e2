"""Teacher embedding cache: every training image's teacher embedding, plain and mirrored, on disk.

Build with `adadistill cache-teacher`, train with `teacher_cache = DIR`; see docs/teacher-cache.md.
"""
from insightface_adadistill.cache.build import TOLERANCE, build_teacher_cache, embed_both, verify_rows
from insightface_adadistill.cache.dataset import CachedTeacherDataset, TeacherSample
from insightface_adadistill.cache.manifest import (
    FLIP_CONVENTION, FORMAT_VERSION, CacheError, TeacherSpec, content_identity, dataset_identity, read_manifest,
    run_identity)
from insightface_adadistill.cache.reader import TeacherCache, build_progress, open_teacher_cache

__all__ = [
    "FLIP_CONVENTION",
    "FORMAT_VERSION",
    "TOLERANCE",
    "CacheError",
    "CachedTeacherDataset",
    "TeacherCache",
    "TeacherSample",
    "TeacherSpec",
    "build_progress",
    "build_teacher_cache",
    "content_identity",
    "dataset_identity",
    "embed_both",
    "open_teacher_cache",
    "read_manifest",
    "run_identity",
    "verify_rows",
]
