"""`adadistill export-onnx`: the file matches PyTorch, keeps the deployment contract and loads in insightface."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.backbones.loading import load_backbone
from insightface_adadistill.export import mfr_check
from insightface_adadistill.commands.export_onnx import main
from insightface_adadistill.export.onnx import ExportError, export_onnx, verify_onnx

PARITY_ATOL = 1e-4


def _backbone(name: str) -> nn.Module:
    """A random backbone whose BatchNorm statistics are not the identity, so BN folding is exercised."""
    model = get_model(name, fp16=False, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = _backbone("tiny_mfn")
    return model, export_onnx(model, tmp_path_factory.mktemp("export") / "tiny_mfn.onnx")


def _aligned_face_bgr() -> np.ndarray:
    """A deterministic (112, 112, 3) uint8 BGR image standing in for an aligned face crop."""
    return np.random.default_rng(7).integers(0, 256, (112, 112, 3), dtype=np.uint8)


@torch.no_grad()
def _torch_embedding(model: nn.Module, image_bgr: np.ndarray) -> np.ndarray:
    """The training-side input convention (arcface_torch's): RGB, (p - 127.5) / 127.5, CHW."""
    rgb = torch.from_numpy(image_bgr[..., ::-1].copy()).permute(2, 0, 1).float()  # (3, 112, 112)
    return model(((rgb - 127.5) / 127.5)[None]).numpy()  # (1, E)


def test_graph_keeps_the_deployment_contract(tiny) -> None:
    model = onnx.load(str(tiny[1]))
    onnx.checker.check_model(model)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "data" and dims == ["batch", 3, 112, 112]
    assert graph_output.name == "embedding" and graph_output.type.tensor_type.shape.dim[1].dim_value == 512
    assert [o.version for o in model.opset_import if o.domain == ""] == [18] and model.ir_version == 8
    assert not any(node.metadata_props for node in model.graph.node)  # no stack traces with local paths
    assert mfr_check.narrow_initializers(model.graph) == []
    assert mfr_check.detect_input_normalisation(model.graph) == (127.5, 127.5)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch_for_any_batch(tiny, batch: int) -> None:
    model, path = tiny
    images = torch.rand(batch, 3, 112, 112) * 2 - 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"data": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert exported.shape == (batch, 512)
    np.testing.assert_allclose(exported, expected, rtol=0, atol=PARITY_ATOL)


def test_insightface_loads_it_as_recognition_model_with_pytorch_embeddings(tiny) -> None:
    insightface = pytest.importorskip("insightface")
    from insightface.app.common import Face
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.utils.face_align import arcface_dst

    model, path = tiny
    recogniser = insightface.model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(recogniser, ArcFaceONNX)
    assert (recogniser.input_mean, recogniser.input_std, recogniser.input_size) == (127.5, 127.5, (112, 112))
    aligned = _aligned_face_bgr()
    expected = _torch_embedding(model, aligned)
    np.testing.assert_allclose(recogniser.get_feat(aligned), expected, rtol=0, atol=1e-3)
    # get(img, face) warps by the 5 landmarks first; landmarks on the template make that the identity
    face = Face(kps=arcface_dst.copy())
    np.testing.assert_allclose(recogniser.get(aligned, face), expected[0], rtol=0, atol=1e-3)


def test_verify_reports_parity_and_catches_a_stale_file(tiny) -> None:
    model, path = tiny
    report = verify_onnx(model, path)
    assert report.batch_size == 4 and report.relative < 1e-5
    changed = _backbone("tiny_mfn")
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(changed, path)


def test_mfn_student_export_passes_the_mfr_checks(tmp_path: Path) -> None:
    model = _backbone("mfn")
    path = export_onnx(model, tmp_path / "mfn.onnx")
    assert verify_onnx(model, path).max_abs_diff < PARITY_ATOL
    report = mfr_check.check_onnx(path, track="ms1m", runs=10)
    assert report.passed, mfr_check.format_table(report)
    assert {r.rule: r.status for r in report.rules}["latency_ms"] == "info"  # measured on the CPU here


def test_static_batch_legacy_opset_and_training_mode_kept(tmp_path: Path) -> None:
    model = _backbone("tiny_resnet").train()
    path = export_onnx(model, tmp_path / "old.onnx", opset=13, batch_size_symbolic=False)
    assert model.training  # exported in eval mode, then restored
    proto = onnx.load(str(path))
    assert proto.ir_version <= mfr_check.MFR_SERVER_MAX_IR
    assert [o.version for o in proto.opset_import if o.domain == ""] == [13]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert verify_onnx(model, path, batch_size=1).max_abs_diff < PARITY_ATOL


def test_rejects_non_fp32_backbones_and_old_opsets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16=False"):
        export_onnx(get_model("tiny_mfn", fp16=True), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="call backbone.float"):
        export_onnx(get_model("tiny_mfn").half(), tmp_path / "b.onnx")
    with pytest.raises(ValueError, match="opset 9 is not supported"):
        export_onnx(get_model("tiny_mfn"), tmp_path / "c.onnx", opset=9)
    assert list(tmp_path.iterdir()) == []


def test_main_exports_a_host_checkpoint(tmp_path: Path, capsys) -> None:
    model = _backbone("tiny_resnet")
    torch.save({"state_dict_backbone": model.state_dict(), "epoch": 1}, tmp_path / "checkpoint_gpu_0.pt")
    out = tmp_path / "deploy" / "student.onnx"
    assert main(["--network", "tiny_resnet", "--model", str(tmp_path / "checkpoint_gpu_0.pt"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "opset 18" in printed and "max abs diff" in printed
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["student.onnx"]
    np.testing.assert_allclose(load_backbone("tiny_resnet", tmp_path / "checkpoint_gpu_0.pt").state_dict()["fc.weight"],
                               model.state_dict()["fc.weight"])


def test_the_command_prints_only_its_summary(tmp_path: Path) -> None:
    """torch's exporter logs four "torchvision is not installed" lines and a FutureWarning about its own
    classes on every default export; the command keeps the terminal to what concerns the user."""
    torch.save(get_model("tiny_mfn").state_dict(), tmp_path / "model.pt")
    run = subprocess.run([sys.executable, "-m", "insightface_adadistill", "export-onnx", "--network", "tiny_mfn",
                          "--model", str(tmp_path / "model.pt"), str(tmp_path / "m.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout.startswith("exported tiny_mfn") and "opset 18" in run.stdout


@pytest.mark.parametrize("spelling", ["same", "dot_path", "symlink"])
def test_main_never_overwrites_the_weights_file(tmp_path: Path, capsys, spelling: str) -> None:
    weights = tmp_path / "m.pt"
    torch.save(get_model("tiny_resnet").state_dict(), weights)
    before = weights.read_bytes()
    out = {"same": weights, "dot_path": tmp_path / "." / "m.pt", "symlink": tmp_path / "m.onnx"}[spelling]
    if spelling == "symlink":
        out.symlink_to(weights)
    assert main(["--network", "tiny_resnet", "--model", str(weights), str(out)]) == 1
    assert "is the --model weights file; refusing to overwrite" in capsys.readouterr().err
    assert weights.read_bytes() == before


def test_main_reads_the_embedding_size_from_the_weights(tmp_path: Path, capsys) -> None:
    torch.save(get_model("tiny_resnet", num_features=128).state_dict(), tmp_path / "model.pt")
    out = tmp_path / "student.onnx"
    argv = ["--network", "tiny_resnet", "--model", str(tmp_path / "model.pt"), str(out)]
    assert main([*argv, "--embedding-size", "512"]) == 1  # a size the file does not have: both named
    assert ("does not fit --network tiny_resnet with embedding size 512: this file looks like a tiny_resnet "
            "with embedding size 128 (keys and shapes match); pass --embedding-size 128") in capsys.readouterr().err
    assert not out.exists()
    assert main(argv) == 0
    assert onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim[1].dim_value == 128
