"""The frozen teacher: weight files, the eval-pinned wrapper, and the teacher's trained classifier."""
from insightface_adadistill.teacher.classifier import load_teacher_classifier, shard_sizes
from insightface_adadistill.teacher.frozen import FrozenTeacher, teacher_forward
from insightface_adadistill.teacher.loading import build_teacher, check_embedding_sizes

__all__ = [
    "FrozenTeacher",
    "build_teacher",
    "check_embedding_sizes",
    "load_teacher_classifier",
    "shard_sizes",
    "teacher_forward",
]
