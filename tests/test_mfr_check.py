"""`adadistill check-onnx`: each MFR rule passes on a conforming graph and fails on the broken one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from insightface_adadistill.export import mfr_check
from insightface_adadistill.commands.check_onnx import main
from insightface_adadistill.export.mfr_check import check_onnx

CHANNELS = 8


def _graph_model(path: Path, *, size: int = 112, batch: int | str = "batch", weight_type: int = TensorProto.FLOAT,
                 outputs: int = 1, feature_dim: int = CHANNELS, first_ops: Sequence[str] = (),
                 nan: bool = False) -> Path:
    """A small face-model-shaped graph: (batch, 3, size, size) -> Conv/Relu x4 -> GAP -> (batch, feature_dim).

    `weight_type=FLOAT16` stores the conv weights in fp16 behind a Cast (what MFR rejects);
    `first_ops` prepends Sub/Mul nodes named like an MXNet model's in-graph normalisation; `nan`
    appends log(0 * embedding), which is -inf.
    """
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "data"
    for op in first_ops:
        inits.append(numpy_helper.from_array(np.array(1.0, np.float32), f"{op}_c"))
        nodes.append(helper.make_node(op, [x, f"{op}_c"], [f"{op}_out"], name=f"{op}0"))
        x = f"{op}_out"
    in_c = 3
    for i in range(4):
        weight = rng.normal(0, 0.1, (CHANNELS, in_c, 3, 3)).astype(np.float32)
        if weight_type == TensorProto.FLOAT16:
            inits.append(numpy_helper.from_array(weight.astype(np.float16), f"w{i}_h"))
            nodes.append(helper.make_node("Cast", [f"w{i}_h"], [f"w{i}"], to=TensorProto.FLOAT, name=f"cast{i}"))
        else:
            inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2],
                                      name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x, in_c = f"r{i}", CHANNELS
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    inits.append(numpy_helper.from_array(rng.normal(0, 1, (CHANNELS, feature_dim)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["emb"], name="fc"))
    last = "emb"
    if nan:
        inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
        nodes.append(helper.make_node("Mul", ["emb", "zero"], ["zeros"], name="times_zero"))
        nodes.append(helper.make_node("Log", ["zeros"], ["log"], name="log"))  # log(0) = -inf
        last = "log"
    graph_outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, [batch, feature_dim])]
    if outputs == 2:
        graph_outputs.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, [batch, CHANNELS]))
    graph = helper.make_graph(nodes, "tiny_face", [helper.make_tensor_value_info(
        "data", TensorProto.FLOAT, [batch, 3, size, size])], graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _statuses(report: mfr_check.CheckReport) -> dict:
    return {r.rule: r.status for r in report.rules}


def test_conforming_graph_passes_with_cpu_latency_informative(tmp_path: Path, capsys) -> None:
    path = _graph_model(tmp_path / "ok.onnx")
    assert main([str(path), "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and mfr_check.CPU_LATENCY_NOTE in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is True
    rows = {r["rule"]: r for r in report["rules"]}
    assert rows["latency_ms"]["status"] == "info"
    assert rows["feature_dim"]["value"] == str(CHANNELS)
    assert rows["normalisation"]["value"] == "mean 127.5 std 127.5"


@pytest.mark.parametrize("kwargs, failing_rule", [
    (dict(weight_type=TensorProto.FLOAT16), "initializer_dtypes"),
    (dict(outputs=2), "outputs"),
    (dict(size=128), "input_size"),
    (dict(nan=True), "batch32_finite"),
    (dict(feature_dim=1024), "feature_dim"),
])
def test_broken_graph_fails_on_its_rule(tmp_path: Path, capsys, kwargs: dict, failing_rule: str) -> None:
    path = _graph_model(tmp_path / "bad.onnx", **kwargs)
    report = check_onnx(path, track="ms1m")
    assert report.failed_rules() == [failing_rule]
    assert main([str(path), "--track", "ms1m"]) == 1
    assert f"FAIL: {failing_rule}" in capsys.readouterr().out


def test_wrong_input_size_skips_runtime_rules(tmp_path: Path) -> None:
    statuses = _statuses(check_onnx(_graph_model(tmp_path / "m.onnx", size=128)))
    assert statuses["input_size"] == "fail" and statuses["latency_ms"] == "skip"


def test_feature_dim_limit_follows_the_track(tmp_path: Path) -> None:
    path = _graph_model(tmp_path / "m.onnx", feature_dim=1024)
    assert not check_onnx(path, track="cfat").passed
    assert check_onnx(path, track="glint").passed


def test_too_few_nodes_fails(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Flatten", ["data"], ["out"], name="flatten")], "flat",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3 * 112 * 112])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "flat.onnx")
    assert check_onnx(tmp_path / "flat.onnx", track="unconstrained").failed_rules() == ["nodes", "feature_dim"]


def test_fixed_batch_is_made_symbolic_in_memory_without_rewriting(tmp_path: Path) -> None:
    path = _graph_model(tmp_path / "fixed.onnx", batch=1)
    before = path.read_bytes()
    report = check_onnx(path)
    assert report.passed and _statuses(report)["batch_symbolic"] == "info"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx"]


def test_folder_uses_the_lexicographically_last_onnx(tmp_path: Path) -> None:
    _graph_model(tmp_path / "a.onnx", size=128)
    _graph_model(tmp_path / "b.onnx")
    assert mfr_check.resolve_model_file(tmp_path) == tmp_path / "b.onnx"
    assert check_onnx(tmp_path).passed


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.onnx")]) == 1
    assert "no such ONNX file or folder" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="holds no"):
        mfr_check.resolve_model_file(tmp_path)


def test_in_graph_normalisation_is_detected(tmp_path: Path) -> None:
    model = onnx.load(_graph_model(tmp_path / "mx.onnx", first_ops=("Sub", "Mul")))
    assert mfr_check.detect_input_normalisation(model.graph) == (0.0, 1.0)
    plain = onnx.load(_graph_model(tmp_path / "plain.onnx"))
    assert mfr_check.detect_input_normalisation(plain.graph) == (127.5, 127.5)


def test_blob_is_rgb_nchw_normalised() -> None:
    image = mfr_check.synthetic_face_bgr()
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    assert np.array_equal(image, mfr_check.synthetic_face_bgr())  # deterministic
    blob = mfr_check.image_blob(image[None], 127.5, 127.5)
    assert blob.shape == (1, 3, 112, 112) and blob.dtype == np.float32
    np.testing.assert_allclose(blob[0, 0], (image[..., 2] - 127.5) / 127.5)  # channel 0 is red


def test_latency_is_enforced_on_a_gpu_provider(tmp_path: Path, monkeypatch) -> None:
    """On CUDA the latency row decides the result; a CPU session stands in, relabelled."""
    real_session = mfr_check._session

    class RelabelledSession:
        def __init__(self, model, provider):
            self._session = real_session(model, "cpu")

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._session, name)

    monkeypatch.setattr(mfr_check, "_session", RelabelledSession)
    path = _graph_model(tmp_path / "m.onnx")
    # limits no measurement can miss either way (the machine's speed must not decide the test)
    monkeypatch.setitem(mfr_check.TRACKS, "cfat", mfr_check.TrackLimits(1024, 512, max_latency_ms=float("inf")))
    assert _statuses(check_onnx(path, runs=5))["latency_ms"] == "pass"
    monkeypatch.setitem(mfr_check.TRACKS, "cfat", mfr_check.TrackLimits(1024, 512, max_latency_ms=0.0))
    report = check_onnx(path, runs=5)
    assert report.provider == "CUDAExecutionProvider" and report.failed_rules() == ["latency_ms"]


def test_a_graph_that_cannot_take_a_batch_of_32_fails(tmp_path: Path) -> None:
    """A batch of 1 baked into a Reshape: the host's symbolic-batch rewrite does not save it either."""
    nodes = [helper.make_node("Relu", ["data" if i == 0 else f"r{i - 1}"], [f"r{i}"], name=f"relu{i}")
             for i in range(8)]
    nodes.append(helper.make_node("Reshape", ["r7", "shape"], ["flat"], name="reshape"))
    nodes.append(helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["out"], name="slice"))
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("shape", [1, 3 * 112 * 112]), ("starts", [0]), ("ends", [16]), ("axes", [1]))]
    graph = helper.make_graph(nodes, "fixed",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fixed.onnx")
    report = check_onnx(tmp_path / "fixed.onnx", runs=5)
    assert report.failed_rules() == ["batch32_finite"]
    assert {r.rule: r.status for r in report.rules}["batch_symbolic"] == "info"
