"""Teachers from ONNX recognition models (insightface model zoo packs or exported files), run by onnxruntime.

`teacher_weights` may name an `.onnx` file or a bare model zoo pack name such as `buffalo_l`, looked
up in `$INSIGHTFACE_HOME/models/<pack>/` (default `~/.insightface/models/<pack>/`), whose recognition
model is the one file insightface's router loads as `ArcFaceONNX`; `teacher.kind` decides which.
Nothing is ever downloaded. The input convention is insightface's own (`ArcFaceONNX` reads mean/std,
name and size from the graph; it feeds RGB, as we do): our batches hold x = (p - 127.5) / 127.5, so
the graph receives (127.5 x + 127.5 - mean) / std, which is x itself for 127.5 / 127.5 models.

Licence: the model zoo's models are for non-commercial research only, and so is a student distilled
from them (docs/backbones.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from insightface_adadistill.errors import InputNotFoundError, UserError, WeightsError
from insightface_adadistill.teacher.kind import needs_network, teacher_weights_kind

ONNX_SUFFIX = ".onnx"
IMAGE_SIZE = (112, 112)  # (W, H) of the aligned crops our data pipeline produces
TRAINING_MEAN = TRAINING_STD = 127.5  # our batches: x = (p - 127.5) / 127.5, RGB
DETECTOR_MIN_OUTPUTS = 5  # insightface routes a graph with >= 5 outputs to its SCRFD detector
LICENCE = ("insightface model zoo models are for non-commercial research only; "
           "see https://github.com/deepinsight/insightface#license")
EXTRAS_HINT = ("ONNX teachers need onnx, onnxruntime and insightface: "
               "pip install 'insightface-adadistill[onnx,insightface]'")


class MissingExtrasError(UserError, ImportError):
    """An ONNX teacher was asked for, but the optional packages that run it are not installed."""


def is_onnx_teacher(weights: str | os.PathLike) -> bool:
    """True for an `.onnx` path or a bare pack name (see `teacher.kind`)."""
    return not needs_network(str(weights))


def _providers(device: torch.device) -> List[Any]:
    """CUDA on the teacher's GPU when onnxruntime has the CUDA provider, with CPU fallback; else CPU."""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # each rank its own GPU
    return ["CPUExecutionProvider"]


def _output_names(path: Path) -> List[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def _session_options(providers: Sequence[Any]) -> Any:
    """On CPU: torch's thread count and no spinning, so the teacher shares the cores with the student
    (onnxruntime's default, a busy-waiting thread per physical core, spins between teacher calls)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if providers == ["CPUExecutionProvider"]:
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _check_graph(path: Path) -> None:
    """Reject, before insightface asserts on them, graphs that cannot be a single-embedding teacher."""
    outputs = _output_names(path)
    if len(outputs) >= DETECTOR_MIN_OUTPUTS:
        raise WeightsError(f"{path}: has {len(outputs)} outputs, so insightface treats it as a face detector "
                         f"(SCRFD/RetinaFace), not a recognition model; give the pack's recognition model "
                         f"(e.g. w600k_r50.onnx in buffalo_l) as teacher_weights")
    if len(outputs) != 1:
        raise WeightsError(f"{path}: has {len(outputs)} outputs {outputs}; a teacher must have exactly one output, "
                         "the (batch, E) embedding")


def load_recognition_model(path: Path, providers: Sequence[str]) -> Any:
    """insightface's `ArcFaceONNX` for the existing file `path`; `WeightsError` unless it is a 112x112
    single-output recogniser, `MissingExtrasError` without onnx, onnxruntime or insightface."""
    try:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    except ImportError as exc:
        raise MissingExtrasError(EXTRAS_HINT) from exc
    _check_graph(path)
    model = get_model(str(path), providers=list(providers), sess_options=_session_options(list(providers)))
    if not isinstance(model, ArcFaceONNX):
        kind = type(model).__name__ if model is not None else "no model kind"
        raise WeightsError(f"{path}: insightface loads it as {kind}, not as a recognition model (ArcFaceONNX); "
                         "a teacher takes (batch, 3, 112, 112) aligned faces and returns one embedding")
    if tuple(model.input_size) != IMAGE_SIZE:
        width, height = model.input_size
        raise WeightsError(f"{path}: expects {width}x{height} inputs, but the training crops are 112x112; use a "
                         "recognition model trained on 112x112 aligned faces")
    return model


def _recognition_models_in(folder: Path) -> List[Path]:
    """The `.onnx` files of a pack that insightface's router loads as recognition models (multi-output
    graphs, the detector, are skipped without being loaded)."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    candidates = [p for p in sorted(folder.glob(f"*{ONNX_SUFFIX}")) if len(_output_names(p)) == 1]
    return [p for p in candidates if isinstance(get_model(str(p), providers=["CPUExecutionProvider"]), ArcFaceONNX)]


def resolve_onnx_teacher(weights: str | os.PathLike) -> Path:
    """`teacher_weights` -> the recognition `.onnx` file it names (see the module docstring).

    Raises:
        InputNotFoundError: a missing file, or a missing pack (the message says where to put it).
        WeightsError: a pack with no recognition model, or with several.
    """
    text = str(weights)
    if teacher_weights_kind(text) == "onnx":
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputNotFoundError(f"ONNX teacher {path} not found; check teacher_weights")
        return path
    folder = Path(os.environ.get("INSIGHTFACE_HOME") or "~/.insightface").expanduser() / "models" / text
    if not folder.is_dir():
        raise InputNotFoundError(
            f"insightface model pack {text!r} not found at {folder}; models are never downloaded here: get the "
            f"pack from insightface's model zoo and unzip it so that {folder}/*.onnx exist (or set "
            f"INSIGHTFACE_HOME, or give the .onnx path as teacher_weights). {LICENCE}")
    try:
        models = _recognition_models_in(folder)
    except ImportError as exc:
        raise MissingExtrasError(EXTRAS_HINT) from exc
    if len(models) != 1:
        names = [p.name for p in sorted(folder.glob(f"*{ONNX_SUFFIX}"))]
        what = "no recognition model" if not models else f"several recognition models {[p.name for p in models]}"
        raise WeightsError(f"{folder}: holds {what} (files: {names}); set teacher_weights to the .onnx file to use")
    return models[0]


class OnnxTeacher(nn.Module):
    """A frozen teacher run by onnxruntime: (B, 3, 112, 112) normalised RGB -> (B, E) float32.

    It has no parameters and is always in eval mode; its outputs carry no graph, on the images'
    device. `model` is insightface's `ArcFaceONNX` (session, input name, mean/std, output names);
    `path` the .onnx file, for messages.
    """

    def __init__(self, model: Any, path: Path) -> None:
        super().__init__()
        self.path = path
        self.session = model.session
        self.input_name = model.input_name
        self.output_name = model.output_names[0]
        self.input_mean = float(model.input_mean)
        self.input_std = float(model.input_std)
        batch = model.input_shape[0]
        self.fixed_batch: Optional[int] = batch if isinstance(batch, int) and batch > 0 else None
        width = model.output_shape[1] if len(model.output_shape) == 2 else None
        self.embedding_size = width if isinstance(width, int) and width > 0 else self._probe_width()
        super().train(False)

    def _probe_width(self) -> int:
        return int(self._run(np.zeros((self.fixed_batch or 1, 3, *IMAGE_SIZE[::-1]), np.float32)).shape[1])

    def train(self, mode: bool = True) -> "OnnxTeacher":
        """Always eval, as every teacher."""
        return super().train(False)

    def to_model_input(self, images: Tensor) -> np.ndarray:
        """Our (x = (p - 127.5) / 127.5) batch -> the graph's (p - input_mean) / input_std, as float32 numpy."""
        x = images.detach().float().cpu()
        if (self.input_mean, self.input_std) != (TRAINING_MEAN, TRAINING_STD):
            x = (x * TRAINING_STD + (TRAINING_MEAN - self.input_mean)) / self.input_std
        return np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def _run(self, blob: np.ndarray) -> np.ndarray:
        """Run the session, in chunks of the graph's batch size when that is fixed."""
        step = self.fixed_batch or len(blob)
        outs = [self.session.run([self.output_name], {self.input_name: blob[i:i + step]})[0]
                for i in range(0, len(blob), step)]
        return np.concatenate(outs)  # (B, E)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE[1], IMAGE_SIZE[0]):
            raise ValueError(f"{self.path}: teacher input must be (B, 3, 112, 112), got {tuple(images.shape)}")
        embeddings = self._run(self.to_model_input(images))  # (B, E)
        return torch.from_numpy(embeddings).float().to(images.device)


def build_onnx_teacher(weights: str | os.PathLike, device: torch.device | str, dtype: str = "fp32",
                       channels_last: bool = False) -> OnnxTeacher:
    """The `OnnxTeacher` for an `.onnx` path or a pack name; see the module docstring.

    `dtype` and `channels_last` shape a PyTorch teacher's forward; an ONNX graph runs as it was
    exported, so anything but the defaults is refused rather than ignored.
    """
    if dtype != "fp32" or channels_last:
        raise WeightsError(f"teacher_dtype={dtype!r} / teacher_channels_last={channels_last} do not apply to the "
                         f"ONNX teacher {weights}: it runs at the precision it was exported with; set "
                         "teacher_dtype='fp32' and teacher_channels_last=False")
    path = resolve_onnx_teacher(weights)
    return OnnxTeacher(load_recognition_model(path, _providers(torch.device(device))), path)
