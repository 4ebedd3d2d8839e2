"""AdaFace's IR networks (`ir_18` ... `ir_101`, `ir_se_50`, `ir_se_101`), state-dict compatible with its checkpoints.

Reference: Kim, Jain, Liu, "AdaFace: Quality Adaptive Margin for Face Recognition" (CVPR 2022), whose
published IR-18/50/101 weights are strong teachers. The layout follows the description of its
`net.py` (docs/backbones.md): `input_layer`, then `output_layer` registered BEFORE `body`, so the
parameter order is stem, head, units. The published weights take BGR; these networks take RGB like
every backbone and reverse the channels first (`BackboneSpec.channels`), so no caller needs a special
case and an IR network we train still loads in AdaFace's own code, which feeds BGR.

The published forward returns (z / |z|, |z|); ours returns z, whose norm is AdaFace's quality signal.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from insightface_adadistill.backbones.base import FaceBackbone, conv3x3, halved, kaiming_init_, stem_conv
from insightface_adadistill.backbones.spec import BackboneSpec, register_variant

CHANNELS = "BGR"  # the channel order the published weights' first convolution was trained on
WIDTHS = (64, 128, 256, 512)
PUBLISHED_DROPOUT = 0.4  # output_layer's Dropout in the published layout
SE_REDUCTION = 16


class SqueezeExcite(nn.Module):
    """Channel gate of the `ir_se` units: avg-pool, `fc1` 1x1 conv to C/16, ReLU, `fc2` back, sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class IRUnit(nn.Module):
    """`res_layer` (BN, 3x3 conv, BN, PReLU, 3x3 conv with the stride, BN[, SE]) + `shortcut_layer`.

    The shortcut is a parameter-free MaxPool2d(1, stride) when the channel count stays, otherwise a
    strided 1x1 conv + BN. No activation after the sum.
    """

    def __init__(self, in_c: int, depth: int, stride: int, se: bool = False) -> None:
        super().__init__()
        if in_c == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_c, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_c), conv3x3(in_c, depth), nn.BatchNorm2d(depth), nn.PReLU(depth),
                  conv3x3(depth, depth, stride), nn.BatchNorm2d(depth)]
        if se:
            layers.append(SqueezeExcite(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR(FaceBackbone):
    """AdaFace's IR network for 112x112 faces; RGB in (reversed to BGR inside), (B, E) embedding out.

    Args:
        units: units per stage, e.g. (3, 4, 14, 3) for ir_50; each stage starts with stride 2.
        num_features: embedding size E (512 in the published weights).
        dropout: output_layer's dropout probability (0.4 published; training passes 0, as for every backbone).
        fp16, amp_dtype: autocast everything up to `output_layer`'s Linear (see `base.FaceBackbone`).
        se: append a squeeze-excitation gate to every unit's `res_layer` (the `ir_se` networks).
        widths: channels per stage; the stem has widths[0].
        stem_stride: 1 = the published 3x3 stem; s > 1 = an s x s patch conv with stride s (test models).
        input_size: square input side, which fixes the flattened size of `output_layer`'s Linear.
    """

    def __init__(self, units: Sequence[int], num_features: int = 512, dropout: float = PUBLISHED_DROPOUT,
                 fp16: bool = False, amp_dtype: Optional[str] = None, se: bool = False,
                 widths: Sequence[int] = WIDTHS, stem_stride: int = 1, input_size: int = 112) -> None:
        super().__init__(fp16=fp16, amp_dtype=amp_dtype)
        if len(units) != len(widths):
            raise ValueError(f"AdaFaceIR needs one width per stage, got units={units} widths={widths}")
        self.input_layer = nn.Sequential(stem_conv(widths[0], stem_stride), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        side = halved(input_size // stem_stride, len(units))  # every stage starts with a stride-2 conv
        # registered before `body`: the published parameter order
        self.output_layer = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.Dropout(dropout), nn.Flatten(),
                                          nn.Linear(widths[-1] * side * side, num_features),
                                          nn.BatchNorm1d(num_features, affine=False))
        blocks = []
        in_c = widths[0]
        for count, depth in zip(units, widths):
            blocks += [IRUnit(in_c if i == 0 else depth, depth, 2 if i == 0 else 1, se) for i in range(count)]
            in_c = depth
        self.body = nn.Sequential(*blocks)
        kaiming_init_(self)  # the published init: conv and linear kaiming-normal (fan_out), BN 1/0, biases 0

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.body(self.input_layer(x.flip(1)))  # RGB -> the BGR the layers were trained on
        return self.output_layer[2](self.output_layer[1](self.output_layer[0](x)))  # BN, dropout, flatten

    def forward_head(self, x: Tensor) -> Tensor:
        return self.output_layer[4](self.output_layer[3](x))  # Linear, BatchNorm1d without affine


ADAFACE = BackboneSpec(source="AdaFace net.py (CVPR 2022); published .ckpt weights load as they are",
                       channels=CHANNELS)
register_variant("ir_18", "AdaFace IR-18, units (2, 2, 2, 2).", AdaFaceIR, ADAFACE, units=(2, 2, 2, 2))
register_variant("ir_34", "AdaFace IR-34, units (3, 4, 6, 3).", AdaFaceIR, ADAFACE, units=(3, 4, 6, 3))
register_variant("ir_50", "AdaFace IR-50, units (3, 4, 14, 3).", AdaFaceIR, ADAFACE, units=(3, 4, 14, 3))
register_variant("ir_101", "AdaFace IR-101, units (3, 13, 30, 3); the WebFace12M teacher.", AdaFaceIR, ADAFACE,
                 units=(3, 13, 30, 3))
register_variant("ir_se_50", "AdaFace IR-SE-50: IR-50 with a squeeze-excitation gate in every unit.", AdaFaceIR,
                 ADAFACE, units=(3, 4, 14, 3), se=True)
register_variant("ir_se_101", "AdaFace IR-SE-101: IR-101 with a squeeze-excitation gate in every unit.", AdaFaceIR,
                 ADAFACE, units=(3, 13, 30, 3), se=True)
