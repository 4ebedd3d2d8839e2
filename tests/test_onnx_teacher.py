"""ONNX teachers: the .pt teacher's embeddings and centres, insightface's input convention, packs, bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.export.onnx import export_onnx
from insightface_adadistill.heads import HeadArgs, build_head, build_margin_loss
from insightface_adadistill.teacher import FrozenTeacher, OnnxTeacher, build_teacher, resolve_onnx_teacher
from insightface_adadistill.training.step import DistillStep

pytest.importorskip("insightface")

E = 16
CLASSES = 6
TOLERANCE = 1e-4


def _calibrated(name: str) -> nn.Module:
    """A random teacher whose BatchNorm statistics moved away from the identity (so BN folding matters)."""
    torch.manual_seed(0)
    model = get_model(name, num_features=E)
    with torch.no_grad():
        model(torch.randn(16, 3, 112, 112))
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("teacher")
    model = _calibrated("tiny_resnet")
    torch.save(model.state_dict(), folder / "model.pt")
    export_onnx(model, folder / "model.onnx")
    return {"pt": folder / "model.pt", "onnx": folder / "model.onnx", "folder": folder}


def _images(batch: int = 4, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1  # (B, 3, 112, 112), (p - 127.5) / 127.5


def test_onnx_teacher_matches_the_pt_teacher(files) -> None:
    onnx_teacher = build_teacher(None, files["onnx"], E, "cpu")
    pt_teacher = build_teacher("tiny_resnet", files["pt"], E, "cpu")
    assert isinstance(onnx_teacher, OnnxTeacher) and isinstance(pt_teacher, FrozenTeacher)
    assert onnx_teacher.embedding_size == E and (onnx_teacher.input_mean, onnx_teacher.input_std) == (127.5, 127.5)
    onnx_teacher.train()
    assert not onnx_teacher.training and list(onnx_teacher.parameters()) == []
    images = _images()
    out = onnx_teacher(images)
    assert out.dtype == torch.float32 and out.shape == (4, E) and not out.requires_grad
    assert (out - pt_teacher(images)).abs().max().item() < TOLERANCE


def _centres_after_steps(teacher: nn.Module, steps: int = 4) -> torch.Tensor:
    """AdaDistill centres after `steps` training-mode steps with a fixed student.

    The student is not optimised: with the margin scale s = 64 a trained student amplifies 1e-6
    teacher differences into different weights, which would test SGD, not the teacher.
    """
    torch.manual_seed(5)
    student = get_model("tiny_mfn", num_features=E)
    head = build_head("adadistill", HeadArgs(build_margin_loss((1.0, 0.5, 0.0)), E, CLASSES))
    step = DistillStep(student, head, teacher)  # student and head in training mode, as built
    for index in range(steps):
        labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
        step(_images(8, seed=10 + index), labels)["loss"].backward()
    return head.weight.clone()


def test_same_adadistill_centres_over_a_few_steps(files) -> None:
    from_onnx = _centres_after_steps(build_teacher(None, files["onnx"], E, "cpu"))
    from_pt = _centres_after_steps(build_teacher("tiny_resnet", files["pt"], E, "cpu"))
    assert not torch.equal(from_pt, _centres_after_steps(build_teacher("tiny_resnet", files["pt"], E, "cpu"), 1))
    assert (from_onnx - from_pt).abs().max().item() < TOLERANCE


def _with_inner_normalisation(source: Path, target: Path) -> Path:
    """The graph of `source` behind Sub(127.5) + Mul(1/127.5) nodes: it takes raw 0-255 RGB pixels.

    The node names follow the MXNet-era zoo models, which is what insightface looks for.
    """
    model = onnx.load(str(source))
    graph = model.graph
    (graph_input,) = graph.input
    for node in graph.node:
        node.input[:] = ["normalised" if name == graph_input.name else name for name in node.input]
    graph.initializer.extend([numpy_helper.from_array(np.array(127.5, np.float32), "pixel_mean"),
                              numpy_helper.from_array(np.array(1 / 127.5, np.float32), "pixel_scale")])
    prologue = [helper.make_node("Sub", [graph_input.name, "pixel_mean"], ["centred"], name="Sub_0"),
                helper.make_node("Mul", ["centred", "pixel_scale"], ["normalised"], name="Mul_1")]
    nodes = prologue + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def test_graph_with_inner_normalisation_gets_raw_pixels(files, tmp_path) -> None:
    raw = _with_inner_normalisation(files["onnx"], tmp_path / "raw_pixels.onnx")
    teacher = build_teacher(None, raw, E, "cpu")
    assert (teacher.input_mean, teacher.input_std) == (0.0, 1.0)  # insightface's detection
    images = _images()
    pixels = teacher.to_model_input(images)
    np.testing.assert_allclose(pixels, (images * 127.5 + 127.5).numpy(), rtol=0, atol=1e-4)
    expected = build_teacher("tiny_resnet", files["pt"], E, "cpu")(images)
    assert (teacher(images) - expected).abs().max().item() < TOLERANCE


def _toy_graph(path: Path, side: int = 112, outputs: int = 1) -> Path:
    """A minimal graph: (N, 3, side, side) -> `outputs` copies of its global average (N, 3)."""
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, side, side])
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten")]
    names = [f"out{i}" for i in range(outputs)]
    nodes += [helper.make_node("Identity", ["flat"], [name], name=f"id{i}") for i, name in enumerate(names)]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3]) for name in names]
    graph = helper.make_graph(nodes, "toy", [data], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_two_outputs_refused(tmp_path) -> None:
    path = _toy_graph(tmp_path / "two.onnx", outputs=2)
    with pytest.raises(ValueError, match=r"two.onnx: has 2 outputs \['out0', 'out1'\]; a teacher must have exactly"):
        build_teacher(None, path, E, "cpu")


def test_detector_refused(tmp_path) -> None:
    path = _toy_graph(tmp_path / "det_10g.onnx", outputs=9)
    with pytest.raises(ValueError, match="treats it as a face detector.*w600k_r50.onnx"):
        build_teacher(None, path, E, "cpu")


def test_wrong_input_size_refused(tmp_path) -> None:
    path = _toy_graph(tmp_path / "big.onnx", side=128)
    with pytest.raises(ValueError, match="big.onnx: expects 128x128 inputs, but the training crops are 112x112"):
        build_teacher(None, path, E, "cpu")


def test_missing_files_and_packs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="pack 'buffalo_l' not found at .*home/models/buffalo_l; "
                                                "models are never downloaded.*non-commercial"):
        build_teacher(None, "buffalo_l", E, "cpu")
    with pytest.raises(FileNotFoundError, match="nope.onnx not found"):
        build_teacher(None, tmp_path / "nope.onnx", E, "cpu")


def test_pack_name_resolves_to_its_recognition_model(files, tmp_path, monkeypatch) -> None:
    pack = tmp_path / "home" / "models" / "mypack"
    pack.mkdir(parents=True)
    (pack / "w600k_tiny.onnx").write_bytes(files["onnx"].read_bytes())
    _toy_graph(pack / "det_10g.onnx", outputs=9)
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "home"))
    assert resolve_onnx_teacher("mypack") == pack / "w600k_tiny.onnx"
    teacher = build_teacher(None, "mypack", E, "cpu")
    images = _images()
    assert (teacher(images) - build_teacher("tiny_resnet", files["pt"], E, "cpu")(images)).abs().max() < TOLERANCE
    (pack / "w600k_copy.onnx").write_bytes(files["onnx"].read_bytes())
    with pytest.raises(ValueError, match="several recognition models"):
        resolve_onnx_teacher("mypack")


def test_pytorch_only_settings_refused(files) -> None:
    with pytest.raises(ValueError, match="teacher_dtype='bf16'.*set teacher_dtype='fp32'"):
        build_teacher(None, files["onnx"], E, "cpu", dtype="bf16")


def test_pt_teacher_still_needs_a_network(files) -> None:
    with pytest.raises(ValueError, match="teacher_network is not set"):
        build_teacher(None, files["pt"], E, "cpu")


def test_trainer_distils_from_an_onnx_teacher_without_teacher_network(files, tmp_path) -> None:
    from insightface_adadistill.commands.train import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.py"
    out = tmp_path / "student"
    assert main([str(recipe), "--set", f"output={out}", "progress_bar=false", "distill=adadistill",
                 f"teacher_weights={files['onnx']}", f"embedding_size={E}", "max_steps=4"]) == 0
    assert (out / "model.pt").is_file() and "centre_teacher_cos=" in (out / "training.log").read_text()


def test_cli_shows_a_bad_onnx_teacher_as_one_error_line(files, tmp_path, monkeypatch, capsys) -> None:
    from insightface_adadistill import cli

    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "home"))
    two = _toy_graph(tmp_path / "two.onnx", outputs=2)
    for weights, message in ((two, "two.onnx: has 2 outputs"), ("buffalo_l", "pack 'buffalo_l' not found")):
        code = cli.main(["train", "tiny_cpu", "--set", f"output={tmp_path / 'out'}", "progress_bar=false",
                         "distill=adadistill", f"teacher_weights={weights}", f"embedding_size={E}", "max_steps=1"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err


def test_fixed_batch_graph_runs_in_chunks(tmp_path) -> None:
    model = _calibrated("tiny_resnet")
    path = export_onnx(model, tmp_path / "batch1.onnx", opset=13, batch_size_symbolic=False)
    teacher = build_teacher(None, path, E, "cpu")
    assert teacher.fixed_batch == 1
    images = _images(3)
    with torch.no_grad():
        expected = model(images)
    assert (teacher(images) - expected).abs().max().item() < TOLERANCE
