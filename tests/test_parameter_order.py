"""Every arcface_torch network registers its parameters in the host's order.

Optimizer state (SGD momentum, AdamW moments) is matched to parameters by position, so it passes
between arcface_torch and us only when `named_parameters()` come in the same order; where two
shapes coincide (a ViT block's norm1/norm2) a wrong order would pass silently to the wrong tensor.
The expected orders are written down here from the host's code description
(docs of `iresnet.py`, `iresnet2060.py`, `mobilefacenet.py`, `vit.py`): module attributes in the
order the host's constructors assign them, a module's own parameters before its children's.
"""
from __future__ import annotations

from typing import List, Sequence

import pytest
import torch

from insightface_adadistill.backbones import backbone_spec, get_model, list_backbones

BN = ("weight", "bias")  # BatchNorm / LayerNorm parameters (running stats are buffers)


def _iresnet(layers: Sequence[int]) -> List[str]:
    """Stem conv1, bn1, prelu; per IBasicBlock bn1, conv1, bn2, prelu, conv2, bn3, then the first
    block's downsample (1x1 conv, BN); head bn2, fc (with bias), features (BN1d)."""
    names = ["conv1.weight", *(f"bn1.{p}" for p in BN), "prelu.weight"]
    for stage, count in enumerate(layers, 1):
        for index in range(count):
            block = ["bn1.weight", "bn1.bias", "conv1.weight", "bn2.weight", "bn2.bias", "prelu.weight",
                     "conv2.weight", "bn3.weight", "bn3.bias"]
            if index == 0:
                block += ["downsample.0.weight", "downsample.1.weight", "downsample.1.bias"]
            names += [f"layer{stage}.{index}.{name}" for name in block]
    return names + ["bn2.weight", "bn2.bias", "fc.weight", "fc.bias", "features.weight", "features.bias"]


def _conv_block(prefix: str) -> List[str]:  # Conv2d (no bias), BN2d, PReLU
    return [f"{prefix}.layers.0.weight", f"{prefix}.layers.1.weight", f"{prefix}.layers.1.bias",
            f"{prefix}.layers.2.weight"]


def _linear_block(prefix: str) -> List[str]:  # Conv2d (no bias), BN2d
    return [f"{prefix}.layers.0.weight", f"{prefix}.layers.1.weight", f"{prefix}.layers.1.bias"]


def _depthwise(prefix: str) -> List[str]:  # ConvBlock 1x1, ConvBlock 3x3 depthwise, LinearBlock 1x1
    return _conv_block(f"{prefix}.layers.0") + _conv_block(f"{prefix}.layers.1") + _linear_block(f"{prefix}.layers.2")


def _residual(prefix: str, count: int) -> List[str]:
    return [name for j in range(count) for name in _depthwise(f"{prefix}.layers.{j}")]


def _mobilefacenet(blocks: Sequence[int]) -> List[str]:
    """layers.0 ConvBlock; layers.1 ConvBlock (one block) or Residual; then DepthWise / Residual
    pairs; conv_sep ConvBlock; features = LinearBlock, Flatten, Linear (no bias), BN1d."""
    first = _conv_block("layers.1") if blocks[0] == 1 else _residual("layers.1", blocks[0])
    return (_conv_block("layers.0") + first
            + _depthwise("layers.2") + _residual("layers.3", blocks[1])
            + _depthwise("layers.4") + _residual("layers.5", blocks[2])
            + _depthwise("layers.6") + _residual("layers.7", blocks[3])
            + _conv_block("conv_sep")
            + _linear_block("features.layers.0") + ["features.layers.2.weight", "features.layers.3.weight",
                                                    "features.layers.3.bias"])


def _vit(depth: int) -> List[str]:
    """Own parameters pos_embed, mask_token; patch_embed.proj; per Block norm1, norm2 (both created
    first), attn (qkv without bias, proj), mlp (fc1, fc2); norm; feature Linear, BN1d, Linear, BN1d."""
    block = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight", "attn.proj.weight",
             "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    return (["pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"]
            + [f"blocks.{i}.{name}" for i in range(depth) for name in block]
            + ["norm.weight", "norm.bias", "feature.0.weight", "feature.1.weight", "feature.1.bias",
               "feature.2.weight", "feature.3.weight", "feature.3.bias"])


HOST_ORDER = {
    "r18": lambda: _iresnet((2, 2, 2, 2)),
    "r34": lambda: _iresnet((3, 4, 6, 3)),
    "r50": lambda: _iresnet((3, 4, 14, 3)),
    "r100": lambda: _iresnet((3, 13, 30, 3)),
    "r200": lambda: _iresnet((6, 26, 60, 6)),
    "r2060": lambda: _iresnet((3, 128, 896, 3)),
    "mbf": lambda: _mobilefacenet((1, 4, 6, 2)),
    "mbf_large": lambda: _mobilefacenet((2, 8, 12, 4)),
    "vit_t": lambda: _vit(12),
    "vit_t_dp005_mask0": lambda: _vit(12),
    "vit_s": lambda: _vit(12),
    "vit_s_dp005_mask_0": lambda: _vit(12),
    "vit_b": lambda: _vit(24),
    "vit_b_dp005_mask_005": lambda: _vit(24),
    "vit_l_dp005_mask_005": lambda: _vit(24),
    "vit_h": lambda: _vit(48),
}


def test_every_host_network_has_its_order_written_down():
    hosts = {name for name in list_backbones() if backbone_spec(name).source.startswith("arcface_torch")}
    assert hosts == set(HOST_ORDER)


# r2060's 1,030 blocks take ~10 s even on the meta device
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "r2060" else n
                                  for n in HOST_ORDER])
def test_parameter_order_is_the_hosts(name):
    with torch.device("meta"):  # names and order only: no memory, no init compute
        model = get_model(name)
    assert [key for key, _ in model.named_parameters()] == HOST_ORDER[name]()


def test_vit_block_norms_come_before_attention_and_mlp():
    """The issue's example: the host registers blocks.0.norm2 before blocks.0.attn.qkv."""
    with torch.device("meta"):
        names = [key for key, _ in get_model("tiny_vit").named_parameters()]
    assert names.index("blocks.0.norm2.weight") < names.index("blocks.0.attn.qkv.weight")
