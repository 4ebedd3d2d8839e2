"""Teacher embedding cache: every training image's teacher embedding, plain and mirrored, on disk.

Build with `adadistill cache-teacher`, train with `teacher_cache = DIR`; see docs/teacher-cache.md.
"""
from insightface_adadistill.cache.build import build_teacher_cache, verify_rows
from insightface_adadistill.cache.dataset import CachedTeacherDataset, TeacherSample
from insightface_adadistill.cache.manifest import CacheError, TeacherSpec, content_identity, run_identity
from insightface_adadistill.cache.reader import TeacherCache, build_progress, open_teacher_cache

__all__ = ["CacheError", "CachedTeacherDataset", "TeacherCache", "TeacherSample", "TeacherSpec", "build_progress",
           "build_teacher_cache", "content_identity", "open_teacher_cache", "run_identity", "verify_rows"]
