"""A trained backbone as an ONNX file for insightface and the MFR checker (docs/deployment.md).

The contract (arcface_torch's `torch2onnx.py` / `onnx_helper.py`): fp32 weights, one input `data` of
shape (batch, 3, 112, 112) holding RGB pixels as (p - 127.5) / 127.5, exactly one output `embedding`
(batch, E), not L2-normalised, and no normalisation in the graph, so insightface's `ArcFaceONNX` and
the MFR checker both pick mean = std = 127.5.

Where we differ from `torch2onnx.py` (opset 11, TorchScript exporter): opset 18 by default, from
torch's `torch.export`-based exporter, which folds BatchNorm. 18 is the lowest opset it writes
natively (below, onnx's version converter fails on our backbones and silently keeps 18; higher ones
convert fine), so the written file's opset is checked against the one asked for. The file drops the
exporter's per-node debug metadata (stack traces with local paths) and gets its opset's lowest IR
version (8 for 18, where the exporter writes 10), for onnxruntime >= 1.14 and insightface 2.x.
Opsets <= 17 use the TorchScript exporter (deprecated, but the only way to old runtimes: `--opset 13`
gives IR 7, which the MFR server's onnxruntime-gpu 1.8 loads). The exporter makes the batch dim
symbolic, and the written file is checked with onnxruntime against PyTorch before success.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, List

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from insightface_adadistill.backbones import backbone_spec
from insightface_adadistill.errors import UserError, WeightsError
from insightface_adadistill.outputs import atomic_write
from insightface_adadistill.export.mfr_check import detect_input_normalisation, narrow_initializers

DEFAULT_OPSET = 18
MIN_OPSET = 11  # the host's torch2onnx opset; older ones cannot express our BatchNorm1d heads
DYNAMO_MIN_OPSET = 18  # the lowest opset the dynamo exporter writes without onnx's version converter
INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
IMAGE_SIZE = 112
PARITY_BATCH = 4
PARITY_RTOL = 1e-3  # max |onnx - torch| / max |torch| that `export-onnx` accepts


class ExportError(UserError, RuntimeError):
    """The exported graph breaks the deployment contract, or does not match PyTorch."""


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """onnxruntime vs PyTorch on the same random batch of `batch_size` images."""

    batch_size: int
    max_abs_diff: float
    max_abs_reference: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.max_abs_reference, 1e-12)


def _check_fp32(backbone: nn.Module) -> None:
    if getattr(backbone, "fp16", False):
        raise ValueError("the backbone was built with fp16=True, which would put autocast casts into the "
                         "graph; build it with fp16=False (the weights are fp32 either way)")
    for name, tensor in [*backbone.named_parameters(), *backbone.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(f"{name} is {tensor.dtype}; MFR and insightface need fp32 weights: call backbone.float()")


def _check_graph(model: onnx.ModelProto, opset: int) -> None:
    """The contract of the module docstring, read from the exported graph."""
    graph = model.graph
    got_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(f"torch's exporter could not write opset {opset} (it wrote {got_opset}); use --opset "
                          f"{DEFAULT_OPSET} (or 11-16 for old onnxruntime versions)")
    if [i.name for i in graph.input] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, got inputs "
                          f"{[i.name for i in graph.input]} and outputs {[o.name for o in graph.output]}")
    narrow = narrow_initializers(graph)
    if narrow:
        raise ExportError(f"{len(narrow)} initializers are narrower than fp32, e.g. {narrow[0]}; MFR rejects them")
    if detect_input_normalisation(graph) != (127.5, 127.5):
        raise ExportError("the first graph nodes look like in-graph normalisation (Sub + Mul/Div), so insightface "
                          "would feed raw pixels; the backbone must expect (p - 127.5) / 127.5 inputs")


def _make_portable(model: onnx.ModelProto) -> None:
    """Drop the exporter's debug metadata and lower the IR version to the opset's minimum, in place.

    The metadata (`metadata_props`, each node's stack trace) is what needs IR version 10."""
    graph = model.graph
    for item in [graph, *graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        del item.metadata_props[:]
    if not model.functions:  # local functions may rely on the exporter's IR version
        model.ir_version = min(model.ir_version, onnx.helper.find_min_ir_version_for(list(model.opset_import), True))


def _not_torchvision_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence only the exporter's notices that do not concern the user: the FutureWarning about torch's
    own `LeafSpec` class, and "torchvision is not installed. Skipping torchvision::nms" (and three more),
    logged while it builds its operator table (our backbones use no torchvision operator)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    logger.addFilter(_not_torchvision_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        logger.removeFilter(_not_torchvision_notice)


def _export_proto(backbone: nn.Module, dummy: torch.Tensor, *, opset: int,
                  batch_size_symbolic: bool) -> onnx.ModelProto:
    """Run the exporter the module docstring picks for `opset`; `dummy` is (B, 3, 112, 112)."""
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if opset >= DYNAMO_MIN_OPSET:
        dynamic_shapes = ({0: torch.export.Dim("batch")},) if batch_size_symbolic else None
        with _quiet_exporter():
            program = torch.onnx.export(backbone, (dummy,), None, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        optimize=True, verbose=False, **names)
        return program.model_proto
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch_size_symbolic else None
    torch.onnx.export(backbone, (dummy,), buffer, dynamo=False, dynamic_axes=dynamic_axes,
                      do_constant_folding=True, **names)
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(backbone: nn.Module, out_path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                batch_size_symbolic: bool = True) -> Path:
    """Export `backbone` ((B, 3, 112, 112) -> (B, E)) to `out_path` and return the path.

    `backbone` (fp32, built with fp16=False) is exported in eval mode (its previous mode is restored)
    on the device of its parameters; `opset` (>= 11) is the default domain's, see the module docstring;
    `batch_size_symbolic` names the batch dim 'batch' (MFR needs it), else the batch is 1. The file is
    written atomically (parent folders created) after the graph passed the contract checks.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported; use {MIN_OPSET} or higher (default {DEFAULT_OPSET})")
    _check_fp32(backbone)
    device = next(backbone.parameters()).device
    batch = 2 if batch_size_symbolic else 1  # torch.export specialises a batch of 1 to a constant
    generator = torch.Generator().manual_seed(0)
    dummy = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).mul_(2).sub_(1).to(device)
    was_training = backbone.training
    backbone.eval()
    try:
        model = _export_proto(backbone, dummy, opset=opset, batch_size_symbolic=batch_size_symbolic)
    finally:
        backbone.train(was_training)
    _check_graph(model, opset)
    _make_portable(model)

    return atomic_write(out_path, lambda fh: fh.write(model.SerializeToString()))


@torch.no_grad()
def verify_onnx(backbone: nn.Module, onnx_path: str | os.PathLike, *, batch_size: int = PARITY_BATCH,
                rtol: float = PARITY_RTOL) -> ParityReport:
    """Run `batch_size` random (B, 3, 112, 112) inputs through onnxruntime (CPU) and `backbone`.

    `ExportError` if PyTorch's output is not finite, or max |onnx - torch| exceeds `rtol` times
    max |torch| (or is NaN)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).mul_(2).sub_(1)
    was_training = backbone.training
    backbone.eval()
    try:
        reference = backbone(images.to(next(backbone.parameters()).device)).float().cpu().numpy()  # (B, E)
    finally:
        backbone.train(was_training)
    if not np.isfinite(reference).all():
        raise ExportError("the PyTorch backbone outputs NaN/Inf on random inputs, so the export cannot be "
                          "verified; check that the trained weights were loaded")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    exported = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]  # (B, E)
    report = ParityReport(batch_size, float(np.abs(exported - reference).max()), float(np.abs(reference).max()))
    if not report.relative <= rtol:  # also rejects NaN
        raise ExportError(f"{onnx_path}: onnxruntime differs from PyTorch by {report.max_abs_diff:.3g} "
                          f"({report.relative:.3g} relative, limit {rtol:g}); the export is not faithful")
    return report


def check_exportable(network: str) -> None:
    """Refuse a backbone whose input is not insightface's and MFR's 112x112, (p - 127.5) / 127.5."""
    spec = backbone_spec(network)
    if spec.input_size != (IMAGE_SIZE, IMAGE_SIZE) or (spec.mean, spec.std) != (127.5, 127.5):
        raise WeightsError(f"backbone {network!r} expects {spec.input_size} inputs normalised with mean {spec.mean} "
                         f"and std {spec.std}; insightface and MFR feed 112x112 with 127.5/127.5, so it cannot be "
                         "exported for them")


def describe_export(path: Path, opset: int, parity: ParityReport) -> List[str]:
    """The summary lines `adadistill export-onnx` prints under its first line: the exporter, the
    input/output contract, the file's size and the onnxruntime-vs-PyTorch difference."""
    exporter = "torch.export" if opset >= DYNAMO_MIN_OPSET else "TorchScript"
    graph = onnx.load(str(path), load_external_data=False).graph
    embedding_size = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    return [f"  opset {opset} ({exporter} exporter), "
            f"input {INPUT_NAME} [batch, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] float32 RGB "
            f"(p - 127.5) / 127.5, output {OUTPUT_NAME} [batch, {embedding_size}] (not L2-normalised)",
            f"  {path.stat().st_size / 2**20:.1f} MiB, {len(graph.node)} nodes, all initializers >= fp32",
            f"  onnxruntime vs PyTorch on {parity.batch_size} random images: max abs diff "
            f"{parity.max_abs_diff:.2e} (relative {parity.relative:.2e}, limit {PARITY_RTOL:g})"]
