"""The frozen teacher: weight files, the eval-pinned wrapper, and the teacher's trained classifier."""
from insightface_adadistill.teacher.classifier import load_teacher_classifier, shard_sizes
from insightface_adadistill.teacher.frozen import FrozenTeacher, teacher_forward
from insightface_adadistill.teacher.loading import build_teacher, check_embedding_sizes
from insightface_adadistill.teacher.onnx_teacher import OnnxTeacher, resolve_onnx_teacher

__all__ = ["FrozenTeacher", "OnnxTeacher", "build_teacher", "check_embedding_sizes", "load_teacher_classifier",
           "resolve_onnx_teacher", "shard_sizes", "teacher_forward"]
