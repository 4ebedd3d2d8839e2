"""AdaFace's IR networks: the published layout, its .ckpt files, the BGR convention, teacher, cache and ONNX.

No AdaFace weights are reachable here, so the layout is written down below from the description
of AdaFace's `net.py` (docs/backbones.md), independently of our module, and every file is a fake
with that layout: a Lightning-style dict whose `state_dict` has `model.`-prefixed network keys and
the margin head's `head.*` entries.
"""
from __future__ import annotations

import argparse
import fractions
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import backbone_spec, get_model
from insightface_adadistill.backbones.loading import load_backbone, load_backbone_weights, matching_networks
from insightface_adadistill.cache import CachedTeacherDataset, open_teacher_cache
from insightface_adadistill.commands import cache_teacher
from insightface_adadistill.commands.export_onnx import main as export_main
from insightface_adadistill.commands.train import main as train_main
from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.errors import WeightsError
from insightface_adadistill.export.onnx import verify_onnx
from insightface_adadistill.teacher import build_teacher, load_teacher_classifier
from run_utils import TINY

Layout = List[Tuple[str, List[int]]]
PUBLISHED_UNITS = {"ir_18": (2, 2, 2, 2), "ir_34": (3, 4, 6, 3), "ir_50": (3, 4, 14, 3), "ir_101": (3, 13, 30, 3)}


def _bn(prefix: str, c: int, affine: bool = True) -> Layout:
    params = [(f"{prefix}.weight", [c]), (f"{prefix}.bias", [c])] if affine else []
    return params + [(f"{prefix}.running_mean", [c]), (f"{prefix}.running_var", [c]),
                     (f"{prefix}.num_batches_tracked", [])]


def published_layout(units, se: bool = False, widths=(64, 128, 256, 512), stem: int = 3, side: int = 7,
                     embedding: int = 512) -> Layout:
    """(key, shape) of AdaFace's state_dict in registration order: input_layer, output_layer, body."""
    layout = [("input_layer.0.weight", [widths[0], 3, stem, stem]), *_bn("input_layer.1", widths[0]),
              ("input_layer.2.weight", [widths[0]])]
    layout += [*_bn("output_layer.0", widths[-1]),  # 1 Dropout and 2 Flatten hold nothing
               ("output_layer.3.weight", [embedding, widths[-1] * side * side]), ("output_layer.3.bias", [embedding]),
               *_bn("output_layer.4", embedding, affine=False)]
    index, in_c = 0, widths[0]
    for count, depth in zip(units, widths):
        for unit in range(count):
            c = in_c if unit == 0 else depth
            p = f"body.{index}"
            if c != depth:  # else the shortcut is a parameter-free MaxPool2d(1, stride)
                layout += [(f"{p}.shortcut_layer.0.weight", [depth, c, 1, 1]), *_bn(f"{p}.shortcut_layer.1", depth)]
            layout += [*_bn(f"{p}.res_layer.0", c), (f"{p}.res_layer.1.weight", [depth, c, 3, 3]),
                       *_bn(f"{p}.res_layer.2", depth), (f"{p}.res_layer.3.weight", [depth]),
                       (f"{p}.res_layer.4.weight", [depth, depth, 3, 3]), *_bn(f"{p}.res_layer.5", depth)]
            if se:
                layout += [(f"{p}.res_layer.6.fc1.weight", [depth // 16, depth, 1, 1]),
                           (f"{p}.res_layer.6.fc2.weight", [depth, depth // 16, 1, 1])]
            index += 1
        in_c = depth
    return layout


def _is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs)


CASES = {**{name: published_layout(units) for name, units in PUBLISHED_UNITS.items()},
         "ir_se_50": published_layout(PUBLISHED_UNITS["ir_50"], se=True),
         "ir_se_101": published_layout(PUBLISHED_UNITS["ir_101"], se=True),
         "tiny_ir": published_layout((1, 1, 1, 1), widths=(16, 32, 64, 128), stem=4, side=2)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_and_parameter_order_are_the_published_layout(name: str) -> None:
    model = meta_model(name)
    expected = CASES[name]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in expected if not _is_buffer(k)]


def test_published_layout_samples_written_by_hand() -> None:
    """A few entries of IR-101 checked against numbers read off the description, not computed."""
    state = meta_model("ir_101").state_dict()
    keys = list(state)
    assert keys[:8] == ["input_layer.0.weight", "input_layer.1.weight", "input_layer.1.bias",
                        "input_layer.1.running_mean", "input_layer.1.running_var",
                        "input_layer.1.num_batches_tracked", "input_layer.2.weight", "output_layer.0.weight"]
    assert list(state["output_layer.3.weight"].shape) == [512, 25088]
    assert "output_layer.4.weight" not in state and "body.0.shortcut_layer.0.weight" not in state
    assert list(state["body.3.shortcut_layer.0.weight"].shape) == [128, 64, 1, 1]  # stage 2 starts at unit 3
    assert list(state["body.48.res_layer.4.weight"].shape) == [512, 512, 3, 3]  # 3 + 13 + 30 + 3 = 49 units
    assert "body.49.res_layer.0.weight" not in state
    assert list(meta_model("ir_se_50").state_dict()["body.0.res_layer.6.fc1.weight"].shape) == [4, 64, 1, 1]


def test_dropout_is_the_published_one_unless_set() -> None:
    assert meta_model("ir_50").output_layer[1].p == 0.4
    assert meta_model("ir_50", dropout=0.0).output_layer[1].p == 0.0


def test_spec_names_the_bgr_convention() -> None:
    for name in CASES:
        spec = backbone_spec(name)
        assert (spec.channels, spec.mean, spec.std, spec.input_size) == ("BGR", 127.5, 127.5, (112, 112))
    assert backbone_spec("r50").channels == "RGB"


def test_forward_is_the_published_forward_on_reversed_channels() -> None:
    """Ours on RGB == input_layer -> body -> output_layer on BGR; the published net returns (z/|z|, |z|)."""
    torch.manual_seed(0)
    model = get_model("tiny_ir", num_features=32).eval()
    rgb = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        z = model(rgb)
        published = nn.Sequential(model.input_layer, model.body, model.output_layer)(rgb[:, [2, 1, 0]])
    assert torch.equal(z, published)
    assert z.shape == (3, 32) and not torch.allclose(z.norm(dim=1), torch.ones(3))  # un-normalised


# ---------------------------------------------------------------- .ckpt files

def _random_model(name: str = "tiny_ir", seed: int = 0) -> nn.Module:
    """`name` with non-trivial BatchNorm statistics, so a wrong load shows in the embeddings."""
    torch.manual_seed(seed)
    model = get_model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _lightning_state(model: nn.Module, classes: int = 10) -> dict:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    return {**state, "head.kernel": torch.randn(512, classes), "head.t": torch.zeros(1),
            "head.batch_mean": torch.ones(1) * 20, "head.batch_std": torch.ones(1) * 100}


def _write_ckpt(path: Path, model: nn.Module, **extra) -> Path:
    torch.save({"epoch": 25, "global_step": 1000, "pytorch-lightning_version": "1.8.6",
                "state_dict": _lightning_state(model), "optimizer_states": [{"state": {}, "param_groups": []}],
                "lr_schedulers": [], "hyper_parameters": {"arch": "ir_101", "m": 0.4, "h": 0.333}, **extra}, path)
    return path


@pytest.fixture(scope="module")
def adaface_ckpt(tmp_path_factory) -> Tuple[nn.Module, Path]:
    model = _random_model()
    return model, _write_ckpt(tmp_path_factory.mktemp("adaface") / "adaface_tiny_ir.ckpt", model)


def test_ckpt_loads_the_network_and_drops_the_head(adaface_ckpt) -> None:
    model, path = adaface_ckpt
    state = load_backbone_weights(path)
    assert list(state) == list(model.state_dict())
    loaded = load_backbone("tiny_ir", path)
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_the_state_dict_saved_alone_loads_too(tmp_path: Path) -> None:
    model = _random_model()
    torch.save(_lightning_state(model), tmp_path / "extracted.pt")
    assert list(load_backbone_weights(tmp_path / "extracted.pt")) == list(model.state_dict())


def test_model_prefix_is_only_lightnings_beside_a_head() -> None:
    """A network whose own keys all start with `model.` (no `head.` or other keys) is not touched."""
    from insightface_adadistill.backbones.loading import _lightning_network
    assert _lightning_network({"model.a": 1, "other.b": 2}) is None
    assert _lightning_network({"head.kernel": 1}) is None
    assert _lightning_network({"model.a": 1, "head.kernel": 2}) == {"a": 1}


def test_wrong_network_names_the_adaface_one(adaface_ckpt) -> None:
    _, path = adaface_ckpt
    assert matching_networks(load_backbone_weights(path)) == [("tiny_ir", 512)]
    with pytest.raises(WeightsError, match=r"looks like a tiny_ir with embedding size 512.*--network tiny_ir"):
        load_backbone("tiny_resnet", path)


def test_ckpt_with_a_namespace_is_refused_with_the_extraction_command(tmp_path: Path) -> None:
    path = _write_ckpt(tmp_path / "hparams.ckpt", _random_model(), hyper_parameters=argparse.Namespace(m=0.4))
    with pytest.raises(WeightsError) as refused:
        load_backbone("tiny_ir", path)
    message = str(refused.value)
    assert "\n" not in message and "weights_only=False" not in message and "argparse.Namespace" in message
    command = message.split('python -c "', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-c", command], check=True, timeout=120)
    extracted = tmp_path / "hparams_state_dict.pt"
    assert message.endswith(f"pass {extracted}") and extracted.is_file()
    assert list(load_backbone_weights(extracted)) == list(get_model("tiny_ir").state_dict())


def test_other_python_objects_are_refused_without_allow_listing_them(tmp_path: Path) -> None:
    path = _write_ckpt(tmp_path / "odd.ckpt", _random_model(), hyper_parameters=fractions.Fraction(1, 3))
    refusal = r"odd.ckpt: cannot be loaded as a weights-only torch checkpoint: it holds an object of type fractions"
    with pytest.raises(WeightsError, match=refusal) as refused:
        load_backbone("tiny_ir", path)
    assert "add_safe_globals" not in str(refused.value) and "weights_only=False" not in str(refused.value)


# ---------------------------------------------------------------- the teacher and its cache

def test_the_ckpts_head_kernel_is_a_teacher_classifier(adaface_ckpt) -> None:
    """ArcDistill / CosDistill: AdaFace's (E, C) `head.kernel` is read like the AdaDistill header."""
    _, path = adaface_ckpt
    kernel = torch.load(path, weights_only=True)["state_dict"]["head.kernel"]
    assert torch.equal(load_teacher_classifier(path, num_classes=10, embedding_size=512), kernel.t())
    hparams = _write_ckpt(path.with_name("hparams.ckpt"), _random_model(), hyper_parameters=argparse.Namespace())
    with pytest.raises(WeightsError, match=r"hparams.ckpt: .* argparse.Namespace .*add_safe_globals"):
        load_teacher_classifier(hparams, num_classes=10, embedding_size=512)


def test_teacher_fed_rgb_sees_bgr(adaface_ckpt) -> None:
    _, path = adaface_ckpt
    teacher = build_teacher("tiny_ir", path, 512, "cpu")
    seen = []
    teacher.backbone.input_layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    rgb = torch.randn(2, 3, 112, 112)
    out = teacher(rgb)
    assert out.shape == (2, 512) and not out.requires_grad
    assert torch.equal(seen[0][:, 0], rgb[:, 2]) and torch.equal(seen[0][:, 2], rgb[:, 0])
    assert torch.equal(seen[0][:, 1], rgb[:, 1])


def test_teacher_cache_from_an_adaface_ckpt_and_an_ir_student(tmp_path: Path) -> None:
    """cache-teacher reads the .ckpt; an IR student distils from it online and from the cache alike."""
    from test_teacher_cache import CLASSES, E, IMAGES, _assert_same_run, _write_rec
    data = _write_rec(tmp_path / "data", 0)
    torch.manual_seed(1)
    path = _write_ckpt(tmp_path / "teacher.ckpt", get_model("tiny_ir", num_features=E).eval())
    cache = tmp_path / "cache"
    sets = [f"rec={data}", f"num_image={IMAGES}", "distill=adadistill", "teacher_network=tiny_ir",
            f"teacher_weights={path}", f"embedding_size={E}", "progress_bar=false", f"output={tmp_path / 'o'}"]
    assert cache_teacher.main([TINY, "--set", *sets, "--out", str(cache)]) == 0
    teacher = build_teacher("tiny_ir", path, E, "cpu")
    dataset = build_dataset(str(data), CLASSES, 2048)
    cached = CachedTeacherDataset(dataset, open_teacher_cache(cache))
    for index in range(0, IMAGES, 37):
        sample = cached[(0, index)]
        expected = teacher(sample.image[None])[0]
        assert torch.allclose(sample.teacher, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    student = [*sets[:-1], "network=tiny_ir", "max_steps=6", "save_every_steps=3", "frequent=1"]
    assert train_main([TINY, "--set", *student, f"output={tmp_path / 'online'}"]) == 0
    assert train_main([TINY, "--set", *student, f"output={tmp_path / 'cached'}", f"teacher_cache={cache}"]) == 0
    assert "the teacher is not loaded" in (tmp_path / "cached" / "training.log").read_text()
    _assert_same_run(tmp_path / "online", tmp_path / "cached")


# ---------------------------------------------------------------- ONNX for the insightface runtime

def test_onnx_export_of_an_adaface_ckpt_runs_in_insightface(tmp_path: Path, capsys) -> None:
    """`export-onnx` from a .ckpt; the graph takes what insightface feeds every model (RGB,
    (p - 127.5) / 127.5) and the BGR order is inside it."""
    insightface = pytest.importorskip("insightface")
    model = _random_model("tiny_ir")
    path = tmp_path / "tiny_ir.onnx"
    ckpt = str(_write_ckpt(tmp_path / "adaface.ckpt", model))
    assert export_main(["--network", "tiny_ir", "--model", ckpt, str(path)]) == 0
    assert "float32 RGB (p - 127.5) / 127.5" in capsys.readouterr().out
    assert verify_onnx(model, path).relative < 1e-5
    recogniser = insightface.model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    assert (recogniser.input_mean, recogniser.input_std) == (127.5, 127.5)
    bgr = np.random.default_rng(7).integers(0, 256, (112, 112, 3), dtype=np.uint8)  # an aligned crop, as cv2 reads it
    with torch.no_grad():
        # the published convention by hand: BGR, (p/255 - 0.5)/0.5, through the layers without our reversal
        x = torch.from_numpy(bgr.copy()).permute(2, 0, 1).float()[None] / 255
        layers = nn.Sequential(model.input_layer, model.body, model.output_layer)
        expected = layers((x - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(recogniser.get_feat(bgr), expected, rtol=0, atol=1e-3)
