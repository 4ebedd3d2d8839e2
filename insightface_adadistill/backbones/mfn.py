"""The AdaDistill paper's MobileFaceNet student (`mfn`), state-dict compatible with its published checkpoint.

Reference: Chen et al., "MobileFaceNets" (CCBR 2018) at its original widths (64/128 channels,
expansion 128/256/512), the student of Boutros et al., "AdaDistill" (ECCV 2024).
1,199,488 parameters, 331 state_dict entries, 512-d output.

The blocks look like arcface_torch's (`mobilefacenet.py`) but name their parts differently
(`conv`/`bn`/`prelu`, `conv_dw`, `project`, `model`), and those names are the compatibility
contract with the published weights, so the two files keep separate block classes.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from insightface_adadistill.backbones.base import FaceBackbone, halved, kaiming_init_, reject_dropout
from insightface_adadistill.backbones.spec import BackboneSpec, register_variant


class ConvBlock(nn.Module):
    """`conv` (no bias) -> `bn` -> `prelu`; with `prelu=False` the paper's linear block (no activation)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, prelu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c) if prelu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class DepthWise(nn.Module):
    """`conv` 1x1 in->g, `conv_dw` 3x3 depthwise g->g (stride), `project` 1x1 linear g->out, optional skip."""

    def __init__(self, in_c: int, out_c: int, stride: int, groups: int, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(in_c, groups)
        self.conv_dw = ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups)
        self.project = ConvBlock(groups, out_c, prelu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """`model`: n residual stride-1 DepthWise(c, c, groups=g)."""

    def __init__(self, channels: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *[DepthWise(channels, channels, stride=1, groups=groups, residual=True) for _ in range(num_block)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class GDC(nn.Module):
    """`conv_6_dw` depthwise linear block over the whole map -> flatten -> `linear` (no bias) -> `bn` (no affine)."""

    def __init__(self, channels: int, kernel: int, embedding_size: int) -> None:
        super().__init__()
        self.conv_6_dw = ConvBlock(channels, channels, kernel=kernel, groups=channels, prelu=False)
        self.conv_6_flatten = nn.Flatten()
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(self.conv_6_flatten(self.conv_6_dw(x))))


class PaperMobileFaceNet(FaceBackbone):
    """The paper's MobileFaceNet: 112 -> 56 (conv1) -> 28 -> 14 -> 7, `conv_6_sep` to 8w, GDC head.

    Args:
        num_features: embedding size E.
        fp16, amp_dtype: autocast conv1..conv_5 (see `base.FaceBackbone`); `conv_6_sep` and the head run in fp32.
        width: base channels w; stages have w, w, 2w, 2w channels, expansions 2w, 2w, 4w, 8w, 4w
            and `conv_6_sep` 8w. The paper uses w = 64.
        blocks: residual blocks in conv_3, conv_4, conv_5; the paper uses (4, 6, 2).
        patch_stem: 0 = the paper's 3x3 stride-2 `conv1`; k > 0 = a k x k stride-k patch conv
            (cheap demo variants).
        input_size: square input side; fixes the GDC kernel (7 at 112).
        dropout: must be 0; the network has no dropout layer.

    Output: (B, E) float32, not L2-normalised.
    """

    def __init__(self, num_features: int = 512, fp16: bool = False, amp_dtype: Optional[str] = None,
                 width: int = 64, blocks: Sequence[int] = (4, 6, 2), patch_stem: int = 0,
                 input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__(fp16=fp16, amp_dtype=amp_dtype)
        reject_dropout(type(self).__name__, dropout)
        w = width
        if patch_stem:
            self.conv1 = ConvBlock(3, w, kernel=patch_stem, stride=patch_stem)
        else:
            self.conv1 = ConvBlock(3, w, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(w, w, kernel=3, padding=1, groups=w)
        self.conv_23 = DepthWise(w, w, stride=2, groups=2 * w)
        self.conv_3 = Residual(w, num_block=blocks[0], groups=2 * w)
        self.conv_34 = DepthWise(w, 2 * w, stride=2, groups=4 * w)
        self.conv_4 = Residual(2 * w, num_block=blocks[1], groups=4 * w)
        self.conv_45 = DepthWise(2 * w, 2 * w, stride=2, groups=8 * w)
        self.conv_5 = Residual(2 * w, num_block=blocks[2], groups=4 * w)
        self.conv_6_sep = ConvBlock(2 * w, 8 * w)
        # conv1 (unless a patch stem), conv_23, conv_34 and conv_45 halve the map
        side = halved(input_size // patch_stem, 3) if patch_stem else halved(input_size, 4)
        self.output_layer = GDC(8 * w, kernel=side, embedding_size=num_features)
        kaiming_init_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        return self.conv_5(self.conv_45(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.output_layer(self.conv_6_sep(x))


register_variant("mfn", "The AdaDistill paper's MobileFaceNet student (1.2 M parameters).", PaperMobileFaceNet,
                 BackboneSpec(source="AdaDistill paper (ECCV 2024), published student"))
