"""The ICCV21-MFR submission checks behind `adadistill check-onnx`, as our own implementation.

The rules follow arcface_torch's `onnx_helper.ArcFaceORT.check`, so that a model that passes here
also passes the MFR server's gate. Unlike the host we report every rule, never rewrite the file (a
fixed batch dim is made symbolic in memory), enforce the latency limit (the MFR server's GPU) only on
a GPU provider, test on a synthetic image (offline, no insightface) and add an `opset` row for the
server's onnxruntime 1.8; docs/deployment.md says why.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnx
import onnxruntime as ort

from insightface_adadistill.errors import InputNotFoundError

REQUIRED_INPUT_SIZE = (112, 112)  # (W, H)
MIN_NODES = 8
LATENCY_RUNS = 50
LATENCY_RANK = 6  # the 6th-fastest of the runs is the latency (host rule)
NAN_BATCH = 32
MIN_INITIALIZER_BYTES = 4
CPU_PROVIDER = "CPUExecutionProvider"
CPU_LATENCY_NOTE = "measured on CPU; the MFR limit refers to a GPU"
# the ongoing MFR server runs onnxruntime-gpu 1.8, which reads opset <= 14 and IR <= 7
MFR_SERVER_MAX_OPSET = 14
MFR_SERVER_MAX_IR = 7

PASS, FAIL, INFO, SKIP = "pass", "fail", "info", "skip"


@dataclasses.dataclass(frozen=True)
class TrackLimits:
    """One MFR track's limits (the host checker's table)."""

    max_size_mib: float
    max_feature_dim: int
    max_latency_ms: float


TRACKS: Dict[str, TrackLimits] = {
    "ms1m": TrackLimits(max_size_mib=1024, max_feature_dim=512, max_latency_ms=10),
    "glint": TrackLimits(max_size_mib=1024, max_feature_dim=1024, max_latency_ms=20),
    "cfat": TrackLimits(max_size_mib=1024, max_feature_dim=512, max_latency_ms=15),
    "unconstrained": TrackLimits(max_size_mib=1024, max_feature_dim=1024, max_latency_ms=30),
}


@dataclasses.dataclass(frozen=True)
class RuleResult:
    """One table row. `status` is pass, fail, info (reported, not enforced) or skip (needs a failed rule)."""

    rule: str
    value: str
    limit: str
    status: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Everything `check-onnx` prints: the file checked, the track, the provider and the rows."""

    model: Path
    track: str
    provider: str
    rules: Tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.status in (PASS, INFO) for r in self.rules)

    def failed_rules(self) -> List[str]:
        return [r.rule for r in self.rules if r.status == FAIL]

    def to_json(self) -> dict:
        return {
            "model": str(self.model),
            "track": self.track,
            "provider": self.provider,
            "passed": self.passed,
            "rules": [dataclasses.asdict(r) for r in self.rules],
        }


def resolve_model_file(path: str | Path) -> Path:
    """A `.onnx` file as given, or the lexicographically last `*.onnx` in a folder (host rule: so the
    host's own `zzzzrefined.onnx` wins if an earlier run left one; `check-onnx` prints the file)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        if not candidates:
            raise InputNotFoundError(f"{path}: folder holds no *.onnx file; export one with `adadistill export-onnx`")
        return candidates[-1]
    raise InputNotFoundError(f"{path}: no such ONNX file or folder; pass the exported .onnx or its folder")


def detect_input_normalisation(graph: onnx.GraphProto) -> Tuple[float, float]:
    """(mean, std) the MFR checker feeds: (0, 1) if the graph normalises itself, else (127.5, 127.5).

    Host rule, for MXNet-converted models: among the first 8 nodes one is named `Sub*`/`_minus*` and
    one `Mul*`/`_mul*`/`Div*` (insightface's `ArcFaceONNX`: the same without `Div`)."""
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_scale = any(n.startswith(("Mul", "_mul", "Div")) for n in names)
    return (0.0, 1.0) if has_sub and has_scale else (127.5, 127.5)


def narrow_initializers(graph: onnx.GraphProto) -> List[Tuple[str, str]]:
    """(name, dtype) of every initializer narrower than 4 bytes (fp16, bf16, int8, bool ...)."""
    return [(t.name, onnx.helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto."))
            for t in graph.initializer
            if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize < MIN_INITIALIZER_BYTES]


def synthetic_face_bgr(size: Tuple[int, int] = REQUIRED_INPUT_SIZE) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 BGR test image standing in for the host's Tom_Hanks sample.

    Smooth colour gradients plus a bright ellipse: every pixel value differs between channels and
    positions, so a swapped or mis-scaled channel changes the output, and nothing is downloaded.
    """
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    face = ((x - width / 2) / (0.35 * width)) ** 2 + ((y - height / 2) / (0.45 * height)) ** 2 < 1.0
    blue = 40 + 150 * x / max(width - 1, 1)
    green = 60 + 120 * y / max(height - 1, 1)
    red = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    image = np.stack([blue, green, red], axis=-1) + 40.0 * face[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def image_blob(images_bgr: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(N, H, W, 3) BGR uint8 -> (N, 3, H, W) float32 RGB, (p - mean) / std: the host's
    `cv2.dnn.blobFromImages(..., swapRB=True)`."""
    rgb = images_bgr[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - mean) / std).transpose(0, 3, 1, 2))


def _dims(value_info: onnx.ValueInfoProto) -> List[int | str]:
    """Static dims as int, symbolic dims as their name ('?' when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _graph_inputs(graph: onnx.GraphProto) -> List[onnx.ValueInfoProto]:
    """Real inputs: old IR versions also list the initializers as graph inputs."""
    weights = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def _error_row(rule: str, limit: str, exc: Exception) -> RuleResult:
    """A failed row for an exception of onnx or onnxruntime (their own types): its type and first line."""
    return RuleResult(rule, type(exc).__name__, limit, FAIL, str(exc).splitlines()[0])


def _session(model: onnx.ModelProto, provider: str) -> ort.InferenceSession:
    """'cpu', or every available provider in onnxruntime's priority order except the remote Azure one."""
    providers = ([CPU_PROVIDER] if provider == "cpu"
                 else [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), providers=providers)


def _static_rules(model: onnx.ModelProto, model_file: Path, limits: TrackLimits) -> List[RuleResult]:
    """The rules read from the graph and the file, before anything runs."""
    graph = model.graph
    inputs = _graph_inputs(graph)
    dims = _dims(inputs[0]) if inputs else []
    rules = [RuleResult("input_rank", str(len(dims)), "4", PASS if len(dims) == 4 else FAIL)]
    if len(dims) == 4:
        if isinstance(dims[0], str):
            rules.append(RuleResult("batch_symbolic", f"'{dims[0]}'", "symbolic", PASS))
        else:
            rules.append(RuleResult("batch_symbolic", str(dims[0]), "symbolic", INFO,
                                    "fixed batch made symbolic in memory, as the host's zzzzrefined.onnx"))
        size = (dims[3], dims[2])
        rules.append(RuleResult("input_size", "x".join(map(str, size)), "112x112",
                                PASS if size == REQUIRED_INPUT_SIZE else FAIL))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    old_runtime_ok = opset <= MFR_SERVER_MAX_OPSET and model.ir_version <= MFR_SERVER_MAX_IR
    rules.append(RuleResult("opset", f"{opset} (IR {model.ir_version})",
                            f"<= {MFR_SERVER_MAX_OPSET} (IR <= {MFR_SERVER_MAX_IR})", INFO,
                            "loads in onnxruntime 1.8" if old_runtime_ok else
                            "the MFR server's onnxruntime 1.8 cannot load it; export with --opset 13"))
    rules.append(RuleResult("outputs", str(len(graph.output)), "1", PASS if len(graph.output) == 1 else FAIL))
    rules.append(RuleResult("nodes", str(len(graph.node)), f">= {MIN_NODES}",
                            PASS if len(graph.node) >= MIN_NODES else FAIL))
    size_mib = model_file.stat().st_size / 2**20
    rules.append(RuleResult("file_size_mib", f"{size_mib:.2f}", f"<= {limits.max_size_mib:g}",
                            PASS if size_mib <= limits.max_size_mib else FAIL))
    mean, std = detect_input_normalisation(graph)
    rules.append(RuleResult("normalisation", f"mean {mean:g} std {std:g}", "detected", INFO,
                            "graph normalises itself" if mean == 0.0 else "no Sub+Mul/Div in the first 8 nodes"))
    narrow = narrow_initializers(graph)
    value = "all >= 4 bytes" if not narrow else f"{len(narrow)} narrow, e.g. {narrow[0][0]} ({narrow[0][1]})"
    rules.append(RuleResult("initializer_dtypes", value, "no fp16/int8", FAIL if narrow else PASS))
    return rules


def _runtime_rules(model: onnx.ModelProto, provider: str, limits: TrackLimits, *,
                   runs: int) -> Tuple[str, List[RuleResult]]:
    """Load in onnxruntime, time single images, run a batch of 32; returns (provider used, rows)."""
    try:
        session = _session(model, provider)
    except Exception as exc:  # a broken graph
        return provider, [_error_row("onnxruntime_load", "loads", exc)]
    used = session.get_providers()[0]
    rows = [RuleResult("onnxruntime_load", used, "loads", PASS)]
    input_name = session.get_inputs()[0].name
    mean, std = detect_input_normalisation(model.graph)
    one = image_blob(synthetic_face_bgr()[None], mean, std)  # (1, 3, 112, 112)

    times_ms = []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {input_name: one})
            times_ms.append(1000.0 * (time.perf_counter() - start))
    except Exception as exc:
        return used, rows + [_error_row("latency_ms", "runs on one image", exc)]
    latency = sorted(times_ms)[min(LATENCY_RANK, runs) - 1]
    on_cpu = used == CPU_PROVIDER
    latency_ok = latency <= limits.max_latency_ms
    rows.append(RuleResult("latency_ms", f"{latency:.2f}", f"<= {limits.max_latency_ms:g}",
                           INFO if on_cpu else (PASS if latency_ok else FAIL),
                           CPU_LATENCY_NOTE if on_cpu else f"{LATENCY_RANK}th fastest of {runs} on {used}"))

    batch = np.repeat(one, NAN_BATCH, axis=0)  # (32, 3, 112, 112)
    try:
        output = session.run(None, {input_name: batch})[0]
    except Exception as exc:  # e.g. a graph that reshapes to a fixed batch of 1
        return used, rows + [_error_row("batch32_finite", "runs on 32 images", exc)]
    finite = bool(np.isfinite(output).all())
    rows.append(RuleResult("batch32_finite", "yes" if finite else "NaN/Inf", "no NaN/Inf", PASS if finite else FAIL))
    rows.append(RuleResult("output_rank", str(output.ndim), "2", PASS if output.ndim == 2 else FAIL))
    dim = output.shape[1] if output.ndim == 2 else int(np.prod(output.shape[1:]))
    rows.append(RuleResult("feature_dim", str(dim), f"<= {limits.max_feature_dim}",
                           PASS if dim <= limits.max_feature_dim else FAIL))
    return used, rows


def _make_batch_symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose first input has dim_param 'None' for the batch, like the host's rewrite."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _graph_inputs(model.graph)[0].type.tensor_type.shape.dim[0].dim_param = "None"
    return model


def check_onnx(path: str | Path, track: str = "cfat", *, provider: str = "default",
               runs: int = LATENCY_RUNS) -> CheckReport:
    """Run every MFR rule on `path` (a .onnx file, or a folder: `resolve_model_file`) and return the rows.

    `track` (one of `TRACKS`) sets the size, feature-dim and latency limits; `provider` is 'default'
    (onnxruntime's preferred one, the host's `cpu=False`) or 'cpu'; `runs` single-image timing runs
    (the host uses 50).
    """
    if track not in TRACKS:
        raise ValueError(f"unknown MFR track {track!r}; use one of {sorted(TRACKS)}")
    if provider not in ("default", "cpu"):
        raise ValueError(f"provider {provider!r} is not supported; use 'default' or 'cpu'")
    limits = TRACKS[track]
    model_file = resolve_model_file(path)
    try:
        model = onnx.load(str(model_file))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own types
        return CheckReport(model_file, track, provider, (_error_row("onnx_parse", "valid ONNX", exc),))

    rules = _static_rules(model, model_file, limits)
    statuses = {r.rule: r.status for r in rules}
    runnable = statuses.get("input_rank") == PASS and statuses.get("input_size") == PASS
    if not runnable:
        skipped = [RuleResult(name, "-", "-", SKIP, "needs a 4-D 112x112 input")
                   for name in ("onnxruntime_load", "latency_ms", "batch32_finite", "output_rank", "feature_dim")]
        return CheckReport(model_file, track, provider, tuple(rules + skipped))
    if statuses["batch_symbolic"] == INFO:
        model = _make_batch_symbolic(model)
    used, runtime = _runtime_rules(model, provider, limits, runs=runs)
    return CheckReport(model_file, track, used, tuple(rules + runtime))


def format_table(report: CheckReport) -> str:
    """`rule | value | limit | result` with notes after the result."""
    header = ("rule", "value", "limit", "result")
    rows = [(r.rule, r.value, r.limit, r.status + (f"  ({r.note})" if r.note else "")) for r in report.rules]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + " | " + row[3]
             for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * len(header[3]))
    return "\n".join(lines)
