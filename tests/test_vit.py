"""ViT backbones: the host's names, state-dict layout and counts, forward semantics, masking, export, teacher use.

The expected keys, shapes and parameter counts are written from arcface_torch's `backbones/vit.py`
layout (docs/backbones.md), not read from our modules. Big ViTs are only built on the meta device.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.backbones.vit import VisionTransformer, drop_path
from insightface_adadistill.export.onnx import export_onnx
from insightface_adadistill.teacher import build_teacher

TOKENS = 144  # patch 9 on 112: a 12 x 12 grid
# host name -> (D, depth, drop_path_rate, mask_ratio, gradient checkpointing); arcface_torch get_model
HOST_VITS = {
    "vit_t": (256, 12, 0.1, 0.1, False),
    "vit_t_dp005_mask0": (256, 12, 0.05, 0.0, False),
    "vit_s": (512, 12, 0.1, 0.1, False),
    "vit_s_dp005_mask_0": (512, 12, 0.05, 0.0, False),
    "vit_b": (512, 24, 0.1, 0.1, True),
    "vit_b_dp005_mask_005": (512, 24, 0.05, 0.05, True),
    "vit_l_dp005_mask_005": (768, 24, 0.05, 0.05, True),
    "vit_h": (1024, 48, 0.1, 0.0, True),
}
TINY = (32, 2, 4)  # tiny_vit: D, depth, heads


def bn(prefix: str, channels: int) -> List[Tuple[str, List[int], bool]]:
    """A BatchNorm entry: (key, shape, is_parameter) for weight, bias and the three buffers."""
    return [(f"{prefix}.weight", [channels], True), (f"{prefix}.bias", [channels], True),
            (f"{prefix}.running_mean", [channels], False), (f"{prefix}.running_var", [channels], False),
            (f"{prefix}.num_batches_tracked", [], False)]


def host_vit_entries(dim: int, depth: int, embedding: int = 512) -> List[Tuple[str, List[int], bool]]:
    """The host ViT's state dict (LayerNorm variant): key, shape and whether it is a parameter."""
    entries = [("pos_embed", [1, TOKENS, dim], True), ("mask_token", [1, 1, dim], True),
               ("patch_embed.proj.weight", [dim, 3, 9, 9], True), ("patch_embed.proj.bias", [dim], True)]
    for i in range(depth):
        b = f"blocks.{i}"
        entries += [(f"{b}.norm1.weight", [dim], True), (f"{b}.norm1.bias", [dim], True),
                    (f"{b}.attn.qkv.weight", [3 * dim, dim], True),
                    (f"{b}.attn.proj.weight", [dim, dim], True), (f"{b}.attn.proj.bias", [dim], True),
                    (f"{b}.norm2.weight", [dim], True), (f"{b}.norm2.bias", [dim], True),
                    (f"{b}.mlp.fc1.weight", [4 * dim, dim], True), (f"{b}.mlp.fc1.bias", [4 * dim], True),
                    (f"{b}.mlp.fc2.weight", [dim, 4 * dim], True), (f"{b}.mlp.fc2.bias", [dim], True)]
    entries += [("norm.weight", [dim], True), ("norm.bias", [dim], True),
                ("feature.0.weight", [dim, TOKENS * dim], True), *bn("feature.1", dim),
                ("feature.2.weight", [embedding, dim], True), *bn("feature.3", embedding)]
    return entries


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(HOST_VITS))
def test_host_state_dict_layout_and_counts(name: str) -> None:
    dim, depth, rate, mask, ckpt = HOST_VITS[name]
    expected = host_vit_entries(dim, depth)
    model = meta_model(name)
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: shape for k, shape, _ in expected}
    assert len(state) == 11 * depth + 18
    params = sum(math.prod(shape) for _, shape, is_param in expected if is_param)
    assert params == 12 * dim * dim * depth + 10 * dim * depth + 144 * dim * dim + 393 * dim + 512 * dim + 1024
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.mask_ratio == mask and model.using_checkpoint == ckpt
    rates = [block.drop_path.p for block in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(rate) and len(rates) == depth
    assert all(block.attn.num_heads == 8 and block.attn.qkv.bias is None for block in model.blocks)
    assert isinstance(model.blocks[0].mlp.act, nn.ReLU6)
    assert model.feature[1].eps == 2e-5 and model.feature[3].eps == 2e-5


def test_published_sizes() -> None:
    """Parameter counts in millions, for docs/backbones.md."""
    names = ("vit_t", "vit_s", "vit_b", "vit_l_dp005_mask_005", "vit_h")
    counts = {name: sum(p.numel() for p in meta_model(name).parameters()) for name in names}
    assert counts == {"vit_t": 19_137_792, "vit_s": 76_023_296, "vit_b": 113_833_472,
                      "vit_l_dp005_mask_005": 255_684_352, "vit_h": 756_393_984}


def _trained_looking(name: str, **kwargs) -> nn.Module:
    """Random weights with BatchNorm statistics and LayerNorm affines away from their defaults."""
    torch.manual_seed(0)
    model = get_model(name, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            if isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
                module.weight.add_(torch.randn(module.weight.shape, generator=generator) * 0.1)
                module.bias.add_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


def reference_forward(state: Dict[str, torch.Tensor], images: torch.Tensor, dim: int, depth: int,
                      heads: int) -> torch.Tensor:
    """The host ViT's eval forward written from its layout with plain tensor ops (explicit softmax)."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=9)
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"]  # (B, 144, D)
    batch = x.shape[0]

    def ln(t, prefix):
        return F.layer_norm(t, (dim,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)

    for i in range(depth):
        b = f"blocks.{i}"
        qkv = ln(x, f"{b}.norm1") @ state[f"{b}.attn.qkv.weight"].t()  # (B, N, 3D)
        q, k, v = qkv.reshape(batch, TOKENS, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, TOKENS, dim)
        x = x + out @ state[f"{b}.attn.proj.weight"].t() + state[f"{b}.attn.proj.bias"]
        hidden = F.relu6(ln(x, f"{b}.norm2") @ state[f"{b}.mlp.fc1.weight"].t() + state[f"{b}.mlp.fc1.bias"])
        x = x + hidden @ state[f"{b}.mlp.fc2.weight"].t() + state[f"{b}.mlp.fc2.bias"]
    x = ln(x, "norm").reshape(batch, TOKENS * dim)

    def bn1d(t, prefix):
        return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=2e-5)

    x = bn1d(x @ state["feature.0.weight"].t(), "feature.1")
    return bn1d(x @ state["feature.2.weight"].t(), "feature.3")


@pytest.mark.parametrize("name,dim,depth,heads", [("tiny_vit", *TINY), ("vit_t", 256, 12, 8)])
def test_strict_round_trip_gives_the_host_eval_embeddings(name, dim, depth, heads) -> None:
    source = _trained_looking(name, num_features=64)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    torch.manual_seed(9)
    other = get_model(name, num_features=64)
    other.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        out = other.eval()(images)
        expected = reference_forward(state, images, dim, depth, heads)
    assert out.shape == (2, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(source(images), out, rtol=0, atol=0)


def _tokens_entering_blocks(model: nn.Module, images: torch.Tensor) -> List[int]:
    seen: List[int] = []
    handle = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    model(images)
    handle.remove()
    return seen


def test_masking_only_in_training() -> None:
    model = _trained_looking("tiny_vit", num_features=16)
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    assert _tokens_entering_blocks(model.eval(), images) == [TOKENS]
    assert _tokens_entering_blocks(model.train(), images) == [int(TOKENS * 0.9)]  # 129 kept
    unmasked = get_model("tiny_vit", num_features=16, mask_ratio=0.0).train()
    assert _tokens_entering_blocks(unmasked, images) == [TOKENS]


def test_masked_positions_hold_the_mask_token_and_differ_per_sample() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(embed_dim=32, depth=1, num_heads=4, mask_ratio=0.25, num_features=8).train()
    with torch.no_grad():
        features = model.forward_features(torch.rand(2, 3, 112, 112)).reshape(2, TOKENS, 32)
    is_mask = (features == model.mask_token[0]).all(dim=2)  # (B, N)
    assert is_mask.sum(dim=1).tolist() == [TOKENS - int(TOKENS * 0.75)] * 2
    assert not torch.equal(is_mask[0], is_mask[1])


def test_eval_output_is_deterministic_and_independent_of_the_batch() -> None:
    model = _trained_looking("tiny_vit", num_features=16)
    images = torch.rand(5, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        together = model(images)
        torch.manual_seed(123)
        alone = torch.cat([model(images[i:i + 1]) for i in range(5)])
        shuffled = model(images.flip(0)).flip(0)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, together, rtol=1e-5, atol=1e-5)


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 5)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}
    assert (per_sample == per_sample[:, :1]).all()
    assert abs(out.mean().item() - 1.0) < 0.05
    assert drop_path(x, 0.25, training=False) is x


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    grads = []
    for using_checkpoint in (True, False):
        torch.manual_seed(0)
        model = VisionTransformer(embed_dim=32, depth=2, num_heads=4, mask_ratio=0.1, drop_path_rate=0.5,
                                  num_features=8, using_checkpoint=using_checkpoint).train()
        model(images).square().sum().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_batchnorm_variant_and_bad_arguments() -> None:
    with torch.device("meta"):
        model = VisionTransformer(embed_dim=32, depth=1, num_heads=4, norm_layer="bn", mask_ratio=0.0)
    state = model.state_dict()
    assert list(state["blocks.0.norm1.bn.weight"].shape) == [TOKENS]
    assert list(state["norm.bn.running_var"].shape) == [TOKENS]
    with pytest.raises(ValueError, match="needs every token; set mask_ratio=0"):
        VisionTransformer(embed_dim=32, depth=1, num_heads=4, norm_layer="bn", mask_ratio=0.1)
    with pytest.raises(ValueError, match="norm_layer 'gn'"):
        VisionTransformer(embed_dim=32, depth=1, num_heads=4, norm_layer="gn")
    with pytest.raises(ValueError, match="no dropout"):
        get_model("tiny_vit", dropout=0.2)
    with pytest.raises(ValueError, match="112x112 inputs, got \\(128, 128\\)"):
        get_model("tiny_vit")(torch.zeros(1, 3, 128, 128))


def test_fp16_flag_keeps_the_head_and_output_fp32() -> None:
    model = _trained_looking("tiny_vit", num_features=16, fp16=True)
    seen = {}
    model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.update(trunk=o.dtype))
    model.feature[0].register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    out = model(images)
    assert out.dtype == torch.float32 and seen == {"trunk": torch.bfloat16, "head": torch.float32}
    model.fp16 = False
    assert (F.cosine_similarity(out, model(images)) > 0.99).all()


def test_onnx_export_and_teachers(tmp_path: Path) -> None:
    pytest.importorskip("insightface")
    model = _trained_looking("tiny_vit", num_features=16)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    path = export_onnx(model, tmp_path / "vit.onnx")
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"data": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    np.testing.assert_allclose(exported, expected.numpy(), rtol=0, atol=1e-4)
    pt_teacher = build_teacher("tiny_vit", tmp_path / "model.pt", 16, "cpu")
    onnx_teacher = build_teacher(None, path, 16, "cpu")
    torch.testing.assert_close(pt_teacher(images), expected, rtol=0, atol=0)
    assert (onnx_teacher(images) - expected).abs().max().item() < 1e-4


def test_tiny_vit_trains_with_adamw_through_the_trainer(tmp_path: Path) -> None:
    """vit_t's layout (masking, drop path, checkpointing) at tiny width, a few AdamW steps of the real trainer."""
    from insightface_adadistill.commands.train import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.py"
    out = tmp_path / "vit"
    assert main([str(recipe), "--set", f"output={out}", "progress_bar=false", "network=tiny_vit",
                 "optimizer=adamw", "lr=0.001", "weight_decay=0.1", "max_steps=3"]) == 0
    state = torch.load(out / "model.pt", weights_only=True)
    model = get_model("tiny_vit", num_features=64)
    model.load_state_dict(state, strict=True)
    assert torch.isfinite(model.eval()(torch.zeros(1, 3, 112, 112))).all()
