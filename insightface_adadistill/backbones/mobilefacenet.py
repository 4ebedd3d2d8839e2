"""arcface_torch's MobileFaceNet (`mbf`, `mbf_large`), state-dict compatible with its `backbones/mobilefacenet.py`.

Reference: Chen et al., "MobileFaceNets" (CCBR 2018), in arcface_torch's scaled variant. Every
block keeps its parts in an indexed `layers` container, hence keys like
`layers.3.layers.2.layers.1.layers.0.weight`. mbf: 333 entries, 2,059,520 parameters.
This is not the paper's MobileFaceNet (`mfn`, see `mfn.py`), which has other names and widths.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from insightface_adadistill.backbones.base import FaceBackbone, kaiming_init_, reject_dropout
from insightface_adadistill.backbones.spec import BackboneSpec, register_variant


class Layers(nn.Module):
    """A block whose parts sit in an indexed `layers` container, the host's key layout for every block."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*parts)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def conv_block(in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
               prelu: bool = True) -> Layers:
    """Conv2d (no bias) -> BatchNorm2d -> PReLU; with `prelu=False` the host's LinearBlock."""
    parts = [nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(out_c)]
    return Layers(*parts, nn.PReLU(out_c)) if prelu else Layers(*parts)


class DepthWise(Layers):
    """Inverted bottleneck: 1x1 in->G, 3x3 depthwise G->G (stride), 1x1 linear G->out, optional skip."""

    def __init__(self, in_c: int, out_c: int, residual: bool = False, stride: int = 2,
                 groups: int = 1) -> None:
        super().__init__(conv_block(in_c, groups),
                         conv_block(groups, groups, kernel=3, stride=stride, padding=1, groups=groups),
                         conv_block(groups, out_c, prelu=False))
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


def residual(channels: int, num_block: int, groups: int) -> Layers:
    """`num_block` residual stride-1 DepthWise(c, c, G) blocks."""
    return Layers(*[DepthWise(channels, channels, residual=True, stride=1, groups=groups) for _ in range(num_block)])


class MobileFaceNet(FaceBackbone):
    """arcface_torch MobileFaceNet: 112 -> 56 -> 28 -> 14 -> 7, then `conv_sep` 1x1 to 512 and GDC.

    Args:
        num_features: embedding size E.
        fp16, amp_dtype: autocast `layers` (see `base.FaceBackbone`); `conv_sep` and `features` run in fp32.
        blocks: blocks per stage; (1, 4, 6, 2) for mbf, (2, 8, 12, 4) for mbf_large.
        scale: channel multiplier (2 for mbf, 4 for mbf_large). The expansion widths G
            (128, 256, 512, 256) do not scale, as in the host.
        dropout: must be 0; the host has no dropout here and ignores the setting.

    Output: (B, E) float32, not L2-normalised.
    """

    def __init__(self, num_features: int = 512, fp16: bool = False, amp_dtype: Optional[str] = None,
                 blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2, dropout: float = 0.0) -> None:
        super().__init__(fp16=fp16, amp_dtype=amp_dtype)
        reject_dropout(type(self).__name__, dropout)
        width = 64 * scale
        if blocks[0] == 1:
            first = conv_block(width, width, kernel=3, padding=1, groups=64)
        else:
            first = residual(width, num_block=blocks[0], groups=128)
        self.layers = nn.ModuleList([
            conv_block(3, width, kernel=3, stride=2, padding=1),
            first,
            DepthWise(width, width, stride=2, groups=128),
            residual(width, num_block=blocks[1], groups=128),
            DepthWise(width, 2 * width, stride=2, groups=256),
            residual(2 * width, num_block=blocks[2], groups=256),
            DepthWise(2 * width, 2 * width, stride=2, groups=512),
            residual(2 * width, num_block=blocks[3], groups=256),
        ])
        self.conv_sep = conv_block(2 * width, 512)
        # the host's GDC head: 7x7 depthwise linear block -> flatten -> Linear (no bias) -> BN1d (affine)
        self.features = Layers(conv_block(512, 512, kernel=7, groups=512, prelu=False), nn.Flatten(),
                               nn.Linear(512, num_features, bias=False), nn.BatchNorm1d(num_features))
        kaiming_init_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.features(self.conv_sep(x))


HOST = BackboneSpec(source="arcface_torch backbones/mobilefacenet.py")
register_variant("mbf", "arcface_torch MobileFaceNet, blocks (1, 4, 6, 2), scale 2.", MobileFaceNet, HOST,
                 blocks=(1, 4, 6, 2), scale=2)
register_variant("mbf_large", "arcface_torch MobileFaceNet, blocks (2, 8, 12, 4), scale 4.", MobileFaceNet, HOST,
                 blocks=(2, 8, 12, 4), scale=4)
