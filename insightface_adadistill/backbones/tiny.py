"""Small registered variants for the CPU demo and the tests (timm's tiny test models).

Both take the real 112x112 input and the usual kwargs (fp16, num_features, dropout) but start with
a stride-4 patch stem, so a batch of 64 trains in a fraction of a second on one CPU core.
`tiny_resnet` plays the teacher (an iResNet), `tiny_mfn` the student (the paper's MobileFaceNet).
"""
from __future__ import annotations

from insightface_adadistill.backbones.iresnet import IResNet
from insightface_adadistill.backbones.mfn import PaperMobileFaceNet
from insightface_adadistill.backbones.spec import BackboneSpec, register_backbone

DEMO = BackboneSpec(source="this project (demo and tests)")


@register_backbone(spec=DEMO)
def tiny_resnet(**kwargs) -> IResNet:
    """Demo teacher: iResNet, one block per stage, widths 16-128, 4x4 patch stem."""
    return IResNet((1, 1, 1, 1), widths=(16, 32, 64, 128), stem_stride=4, **kwargs)


@register_backbone(spec=DEMO)
def tiny_mfn(**kwargs) -> PaperMobileFaceNet:
    """Demo student: the paper's MobileFaceNet at width 8, one block per stage, 4x4 patch stem."""
    return PaperMobileFaceNet(width=8, blocks=(1, 1, 1), patch_stem=4, **kwargs)
