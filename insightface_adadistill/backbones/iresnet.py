"""Improved ResNet (iResNet), state-dict compatible with arcface_torch `backbones/iresnet.py`.

Reference: Duta et al., "Improved Residual Networks for Image and Video Recognition" (ICPR 2020),
as used by ArcFace. Key names, order and shapes equal arcface_torch's `model.pt` / `backbone.pth`
(e.g. r50: 475 entries, 43,590,848 parameters of which the 512 of `features.weight` are frozen).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint_sequential

from insightface_adadistill.backbones.base import FaceBackbone, conv3x3, halved, stem_conv
from insightface_adadistill.backbones.spec import BackboneSpec, register_variant

HOST_WIDTHS = (64, 128, 256, 512)


class IBasicBlock(nn.Module):
    """Pre-activation basic block: bn1 -> conv1 -> bn2 -> prelu -> conv2 (stride) -> bn3, + identity.

    There is no activation after the addition (the host's choice).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


def _stage(inplanes: int, planes: int, num_blocks: int) -> nn.Sequential:
    """One stage; its first block halves the resolution, so it always has a 1x1 `downsample`."""
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
        nn.BatchNorm2d(planes, eps=1e-05),
    )
    blocks = [IBasicBlock(inplanes, planes, stride=2, downsample=downsample)]
    blocks += [IBasicBlock(planes, planes) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class IResNet(FaceBackbone):
    """iResNet for 112x112 faces: stem, stride-2 stages, then BN -> flatten -> dropout -> fc -> BN1d.

    Args:
        layers: blocks per stage, e.g. (3, 4, 14, 3) for r50.
        num_features: embedding size E.
        dropout: dropout probability before `fc` (in place, as in the host).
        fp16, amp_dtype: autocast the trunk (see `base.FaceBackbone`).
        zero_init_residual: zero each block's `bn2` weight (the host zeroes bn2, not bn3).
        widths: channels per stage; the host uses (64, 128, 256, 512).
        stem_stride: 1 = the host's 3x3 stem; s > 1 = an s x s patch conv with stride s (demo models).
        input_size: square input side, which fixes the flattened size `fc` sees.
        checkpoint_segments: stage number (1-4) -> segments for activation checkpointing of that
            stage in training (`torch.utils.checkpoint.checkpoint_sequential`), as the host's r2060.

    Output: (B, E) float32, not L2-normalised. `features.weight` is constant 1.0 and frozen.
    """

    def __init__(self, layers: Sequence[int], num_features: int = 512, dropout: float = 0.0,
                 fp16: bool = False, amp_dtype: Optional[str] = None,
                 zero_init_residual: bool = False, widths: Sequence[int] = HOST_WIDTHS,
                 stem_stride: int = 1, input_size: int = 112,
                 checkpoint_segments: Optional[Mapping[int, int]] = None) -> None:
        super().__init__(fp16=fp16, amp_dtype=amp_dtype)
        if len(layers) != len(widths):
            raise ValueError(f"IResNet needs one width per stage, got layers={layers} widths={widths}")
        self.conv1 = stem_conv(widths[0], stem_stride)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        self.num_stages = len(layers)
        self.checkpoint_segments = dict(checkpoint_segments or {})
        inplanes = widths[0]
        for index, (num_blocks, planes) in enumerate(zip(layers, widths)):
            self.add_module(f"layer{index + 1}", _stage(inplanes, planes, num_blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = halved(input_size // stem_stride, len(layers))  # every stage starts with a stride-2 conv
        self.fc = nn.Linear(inplanes * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Host init: conv N(0, 0.1), BN 1/0, Linear torch default; `features.weight` fixed at 1."""
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for index in range(self.num_stages):
            stage = getattr(self, f"layer{index + 1}")
            segments = self.checkpoint_segments.get(index + 1)
            if segments and self.training:  # recompute in backward: r2060's 1,024 middle blocks need it
                x = checkpoint_sequential(stage, segments, x, use_reentrant=False)
            else:
                x = stage(x)
        x = torch.flatten(self.bn2(x), 1)  # (B, C * side * side), 25088 for the host models
        return self.dropout(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.features(self.fc(x))


HOST = BackboneSpec(source="arcface_torch backbones/iresnet.py")
register_variant("r18", "iResNet-18, layers (2, 2, 2, 2).", IResNet, HOST, layers=(2, 2, 2, 2))
register_variant("r34", "iResNet-34, layers (3, 4, 6, 3).", IResNet, HOST, layers=(3, 4, 6, 3))
register_variant("r50", "iResNet-50, layers (3, 4, 14, 3); the paper's teacher.", IResNet, HOST, layers=(3, 4, 14, 3))
register_variant("r100", "iResNet-100, layers (3, 13, 30, 3).", IResNet, HOST, layers=(3, 13, 30, 3))
register_variant("r200", "iResNet-200, layers (6, 26, 60, 6).", IResNet, HOST, layers=(6, 26, 60, 6))
register_variant("r2060", "iResNet-2060, layers (3, 128, 896, 3); stages 2 and 3 checkpointed in 20 and 100 segments.",
                 IResNet, BackboneSpec(source="arcface_torch backbones/iresnet2060.py"),
                 layers=(3, 128, 896, 3), checkpoint_segments={2: 20, 3: 100})
