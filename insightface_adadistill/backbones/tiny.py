"""Small registered variants for the CPU demo and the tests (timm's tiny test models).

Both take the real 112x112 input and the usual kwargs (fp16, num_features, dropout) but start with
a stride-4 patch stem, so a batch of 64 trains in a fraction of a second on one CPU core.
`tiny_resnet` plays the teacher (an iResNet), `tiny_mfn` the student (the paper's MobileFaceNet).
`tiny_vit` is the host's ViT layout (patch 9, 144 tokens, masking, drop path, checkpointing) at
width 32 and depth 2, for the ViT code paths. `tiny_ir` is AdaFace's IR layout (BGR inside, both
shortcut kinds, `output_layer` before `body`), for the AdaFace teacher paths.
"""
from __future__ import annotations

import dataclasses

from insightface_adadistill.backbones.adaface import ADAFACE, AdaFaceIR
from insightface_adadistill.backbones.iresnet import IResNet
from insightface_adadistill.backbones.mfn import PaperMobileFaceNet
from insightface_adadistill.backbones.spec import BackboneSpec, register_backbone, register_variant
from insightface_adadistill.backbones.vit import VisionTransformer

DEMO = BackboneSpec(source="this project (demo and tests)")


register_variant("tiny_resnet", "Demo teacher: iResNet, one block per stage, widths 16-128, 4x4 patch stem.", IResNet,
                 DEMO, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_stride=4)
register_variant("tiny_mfn", "Demo student: the paper's MobileFaceNet at width 8, one block per stage, 4x4 patch stem.",
                 PaperMobileFaceNet, DEMO, width=8, blocks=(1, 1, 1), patch_stem=4)
register_variant("tiny_ir", "AdaFace IR layout (BGR inside), one unit per stage, widths 16-128, 4x4 patch stem.",
                 AdaFaceIR, dataclasses.replace(ADAFACE, source=DEMO.source),
                 units=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_stride=4)


@register_backbone(spec=DEMO)
def tiny_vit(**kwargs) -> VisionTransformer:
    """ViT like vit_t (patch 9, 144 tokens, mask 0.1, drop path 0.1) at D 32, depth 2, 4 heads, checkpointed."""
    layout = dict(img_size=112, patch_size=9, embed_dim=32, depth=2, num_heads=4, drop_path_rate=0.1,
                  norm_layer="ln", mask_ratio=0.1, using_checkpoint=True)
    return VisionTransformer(**{**layout, **kwargs})  # tests may override the layout, e.g. mask_ratio=0
