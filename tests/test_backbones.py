"""Backbone registry, arcface_torch / paper state-dict compatibility, forward contract and fp16 flag.

Large models are only built on the meta device (no memory, no compute); real forwards run on the
small ones at batch 1-2.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import BackboneSpec, backbone_spec, get_model, list_backbones, register_backbone
from insightface_adadistill.backbones.spec import BACKBONES

# (state_dict entries, parameters) at num_features=512: arcface_torch's iresnet.py and
# mobilefacenet.py, and the published AdaDistill student.
EXPECTED_COUNTS = {
    "r18": (187, 24_025_600),
    "r34": (331, 34_139_328),
    "r50": (475, 43_590_848),
    "r100": (925, 65_156_160),
    "r200": (1807, 118_833_920),
    "mbf": (333, 2_059_520),
    "mbf_large": (606, 6_314_880),
    "mfn": (331, 1_199_488),
}
HOST_NAMES = ["r18", "r34", "r50", "r100", "r200", "r2060", "mbf", "mbf_large", "vit_t", "vit_t_dp005_mask0", "vit_s",
              "vit_s_dp005_mask_0", "vit_b", "vit_b_dp005_mask_005", "vit_l_dp005_mask_005", "vit_h"]
SMALL = ["mbf", "mfn", "tiny_ir", "tiny_mfn", "tiny_resnet", "tiny_vit"]
IRESNETS = ["r18", "r34", "r50", "r100", "r200", "tiny_resnet"]


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs)


def test_host_names_registered():
    assert set(HOST_NAMES + ["mfn"]) <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_spec(name):
    spec = backbone_spec(name)
    assert isinstance(spec, BackboneSpec)
    assert spec.input_size == (112, 112) and spec.mean == 127.5 and spec.std == 127.5
    assert spec.embedding_size == 512 and spec.description and spec.source


# r2060's 1,030 blocks take ~10 s even on the meta device
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "r2060" else n
                                  for n in list_backbones()])
def test_output_shape_on_meta(name):
    model = meta_model(name, num_features=128).eval()
    out = model(torch.empty(2, 3, 112, 112, device="meta"))
    assert out.shape == (2, 128) and out.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_state_dict_and_parameter_counts(name):
    model = meta_model(name)
    entries, params = EXPECTED_COUNTS[name]
    assert len(model.state_dict()) == entries
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name,key,shape", [
    ("r50", "conv1.weight", [64, 3, 3, 3]),
    ("r50", "layer1.0.conv1.weight", [64, 64, 3, 3]),
    ("r50", "layer4.0.conv1.weight", [512, 256, 3, 3]),
    ("r50", "layer4.0.downsample.0.weight", [512, 256, 1, 1]),
    ("r50", "layer3.13.bn3.running_var", [256]),
    ("r50", "fc.weight", [512, 25088]),
    ("r50", "features.num_batches_tracked", []),
    ("r100", "layer2.12.prelu.weight", [128]),
    ("mbf", "layers.1.layers.0.weight", [128, 2, 3, 3]),
    ("mbf", "layers.3.layers.2.layers.1.layers.0.weight", [128, 1, 3, 3]),
    ("mbf", "layers.5.layers.0.layers.2.layers.1.running_var", [256]),
    ("mbf", "layers.6.layers.2.layers.0.weight", [256, 512, 1, 1]),
    ("mbf", "conv_sep.layers.2.weight", [512]),
    ("mbf", "features.layers.0.layers.0.weight", [512, 1, 7, 7]),
    ("mbf", "features.layers.2.weight", [512, 512]),
    ("mbf", "features.layers.3.bias", [512]),
    ("mfn", "conv1.conv.weight", [64, 3, 3, 3]),
    ("mfn", "conv2_dw.conv.weight", [64, 1, 3, 3]),
    ("mfn", "conv_23.conv.conv.weight", [128, 64, 1, 1]),
    ("mfn", "conv_23.conv_dw.conv.weight", [128, 1, 3, 3]),
    ("mfn", "conv_23.project.bn.running_mean", [64]),
    ("mfn", "conv_3.model.3.project.conv.weight", [64, 128, 1, 1]),
    ("mfn", "conv_4.model.5.conv_dw.prelu.weight", [256]),
    ("mfn", "conv_45.conv_dw.conv.weight", [512, 1, 3, 3]),
    ("mfn", "conv_5.model.1.conv.conv.weight", [256, 128, 1, 1]),
    ("mfn", "conv_6_sep.conv.weight", [512, 128, 1, 1]),
    ("mfn", "output_layer.conv_6_dw.conv.weight", [512, 1, 7, 7]),
    ("mfn", "output_layer.linear.weight", [512, 512]),
    ("mfn", "output_layer.bn.running_var", [512]),
])
def test_key_samples(name, key, shape):
    assert list(meta_model(name).state_dict()[key].shape) == shape


def test_key_order_and_heads():
    r50 = list(meta_model("r50").state_dict())
    assert r50[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                       "bn1.num_batches_tracked", "prelu.weight"]
    block = [k[len("layer1.0."):].rsplit(".", 1)[0] for k in r50 if k.startswith("layer1.0.")]
    assert list(dict.fromkeys(block)) == ["bn1", "conv1", "bn2", "prelu", "conv2", "bn3", "downsample.0",
                                          "downsample.1"]
    assert r50[-8:-5] == ["bn2.num_batches_tracked", "fc.weight", "fc.bias"]
    mbf = meta_model("mbf").state_dict()
    assert "features.layers.2.bias" not in mbf  # GDC Linear has no bias
    mfn = meta_model("mfn").state_dict()
    assert "output_layer.bn.weight" not in mfn and "output_layer.linear.bias" not in mfn


@pytest.mark.parametrize("name", IRESNETS)
def test_iresnet_features_weight_frozen(name):
    model = meta_model(name)
    assert not model.features.weight.requires_grad and model.features.bias.requires_grad
    assert sum(not p.requires_grad for p in model.parameters()) == 1


def test_features_weight_is_one_and_stays_frozen():
    model = get_model("tiny_resnet", num_features=16)
    assert torch.equal(model.features.weight, torch.ones(16))
    model(torch.randn(2, 3, 112, 112)).sum().backward()
    assert model.features.weight.grad is None and model.fc.weight.grad is not None


@pytest.mark.parametrize("name", SMALL)
def test_forward_contract_and_round_trip(name):
    model = get_model(name, num_features=32).eval()
    images = torch.randn(2, 3, 112, 112)
    out = model(images)
    assert out.shape == (2, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.manual_seed(1)
    other = get_model(name, num_features=32)
    other.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(other.eval()(images), out)


def test_r18_forward_batch_one():
    model = get_model("r18", num_features=8).eval()
    out = model(torch.randn(1, 3, 112, 112))
    assert out.shape == (1, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_mfn", "mbf", "tiny_ir"])
def test_fp16_flag_autocasts_trunk_only_on_cpu(name):
    model = get_model(name, fp16=True, num_features=16).eval()
    dtypes = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda m, i, o, n=module_name: dtypes.__setitem__(n, o.dtype))
    images = torch.randn(1, 3, 112, 112)
    out = model(images)
    assert out.dtype == torch.float32
    head_layers = {n for n in dtypes if n.startswith(("fc", "features", "conv_sep", "conv_6_sep", "output_layer"))}
    assert head_layers and all(dtypes[n] == torch.float32 for n in head_layers)
    assert all(dtypes[n] == torch.bfloat16 for n in set(dtypes) - head_layers)
    model.fp16 = False
    reference = model(images)
    cos = torch.nn.functional.cosine_similarity(out, reference)
    assert (cos > 0.95).all()


def test_amp_dtype_choice():
    model = get_model("tiny_mfn", fp16=True, amp_dtype="fp16").eval()
    seen = []
    model.conv1.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert model(torch.randn(1, 3, 112, 112)).dtype == torch.float32
    assert seen == [torch.float16]
    with pytest.raises(ValueError, match="amp_dtype"):
        get_model("tiny_mfn", fp16=True, amp_dtype="fp8")


def test_no_fp16_follows_callers_autocast():
    model = get_model("tiny_mfn").eval()
    seen = []
    model.conv1.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 112, 112)).dtype == torch.float32
    assert seen == [torch.bfloat16]


def test_dropout_kwarg():
    model = meta_model("r50", dropout=0.4)
    assert model.dropout.p == 0.4
    for name in ["mbf", "mbf_large", "mfn", "tiny_mfn"]:
        meta_model(name, dropout=0.0)
        with pytest.raises(ValueError, match="no dropout"):
            meta_model(name, dropout=0.1)


def test_none_kwargs_are_dropped():
    model = meta_model("mbf", fp16=None, num_features=None, dropout=None)
    assert model.fp16 is False and model.features.layers[2].out_features == 512


def test_unknown_names():
    with pytest.raises(ValueError, match="Did you mean 'mbf_large'"):
        get_model("mbf_larg")
    with pytest.raises(ValueError, match="'r50'"):
        get_model("iresnet50")
    with pytest.raises(TypeError):
        meta_model("r50", not_a_kwarg=1)


def test_register_backbone_one_function(monkeypatch):
    # Register into copies so the global registry is unchanged after the test.
    monkeypatch.setattr(BACKBONES, "_factories", dict(BACKBONES._factories))
    monkeypatch.setattr(BACKBONES, "_specs", dict(BACKBONES._specs))

    @register_backbone
    def _test_only_linear(num_features: int = 4, **kwargs) -> nn.Module:
        """A test-only stand-in."""
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 112 * 112, num_features))

    assert "_test_only_linear" in list_backbones()
    assert backbone_spec("_test_only_linear").description == "A test-only stand-in."
    assert get_model("_test_only_linear", num_features=3)(torch.zeros(1, 3, 112, 112)).shape == (1, 3)
    with pytest.raises(ValueError, match="twice"):
        register_backbone(_test_only_linear)


def test_init_follows_host():
    torch.manual_seed(0)
    model = get_model("tiny_resnet", zero_init_residual=True)
    assert abs(model.layer2[0].conv1.weight.std().item() - 0.1) < 0.01
    assert torch.equal(model.layer1[0].bn2.weight, torch.zeros(16))
    mfn = get_model("mfn")
    fan_out = 128 * 1 * 1
    assert abs(mfn.conv_23.conv.conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.01


def iresnet_counts_from_spec(layers, embedding=512):
    """(state_dict entries, parameters) of a host iResNet from its key table: stem, blocks, downsample, head."""
    widths, entries, params, inplanes = (64, 128, 256, 512), 7 + 12, 64 * 27 + 2 * 64 + 64, 64
    for num_blocks, planes in zip(layers, widths):
        for index in range(num_blocks):
            c_in = inplanes if index == 0 else planes
            entries += 18  # bn1 (5), conv1, bn2 (5), prelu, conv2, bn3 (5)
            params += 2 * c_in + 9 * c_in * planes + 2 * planes + planes + 9 * planes * planes + 2 * planes
        entries += 6  # downsample conv + BN (5)
        params += planes * inplanes + 2 * planes
        inplanes = planes
    params += 2 * 512 + 512 * 7 * 7 * embedding + embedding + 2 * embedding  # bn2, fc, features
    return entries, params


def test_spec_count_formula_reproduces_the_published_counts():
    assert iresnet_counts_from_spec((3, 4, 14, 3)) == EXPECTED_COUNTS["r50"]
    assert iresnet_counts_from_spec((3, 13, 30, 3)) == EXPECTED_COUNTS["r100"]


def test_r2060_has_the_host_layout():
    model = meta_model("r2060")
    state = model.state_dict()
    assert (len(state), sum(p.numel() for p in model.parameters())) == iresnet_counts_from_spec((3, 128, 896, 3))
    assert list(state["layer2.127.conv2.weight"].shape) == [128, 128, 3, 3]
    assert list(state["layer3.895.bn3.running_var"].shape) == [256]
    assert list(state["layer4.0.downsample.0.weight"].shape) == [512, 256, 1, 1]
    assert "layer3.896.bn1.weight" not in state and list(state["fc.weight"].shape) == [512, 25088]
    assert model.checkpoint_segments == {2: 20, 3: 100}


def test_checkpointed_stages_give_the_same_gradients():
    from insightface_adadistill.backbones.iresnet import IResNet

    images = torch.randn(2, 3, 112, 112)
    grads = []
    for segments in ({2: 2}, None):
        torch.manual_seed(0)
        model = IResNet((1, 3, 1, 1), widths=(8, 8, 8, 8), stem_stride=4, num_features=8,
                        checkpoint_segments=segments).train()
        model(images).square().sum().backward()
        grads.append(model.layer2[1].conv1.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
