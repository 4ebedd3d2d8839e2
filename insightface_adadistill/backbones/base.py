"""The forward surface every backbone shares, and its mixed-precision rule.

arcface_torch's `fp16=True` runs the trunk under `torch.cuda.amp.autocast` and the head (`fc` +
`features`, or `conv_sep` + GDC) in fp32 on a float input, so the embedding is always float32. We
keep that rule but autocast on the device type of the input, so the same flag works on CPU:
the autocast dtype is fp16 on CUDA and bf16 elsewhere unless `amp_dtype` names one.
"""
from __future__ import annotations

import abc
from typing import ContextManager, Optional

import torch
from torch import Tensor, nn

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = ("fp32", *AMP_DTYPES)


def amp_dtype_for(device_type: str, amp_dtype: Optional[str] = None) -> torch.dtype:
    """The autocast dtype: `amp_dtype` if given, else fp16 on CUDA (the host's choice), bf16 elsewhere."""
    if amp_dtype is None:
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype {amp_dtype!r} is not supported; use one of {sorted(AMP_DTYPES)}")
    return AMP_DTYPES[amp_dtype]


def precision_context(device_type: str, precision: str) -> ContextManager:
    """Autocast to `precision` ('fp16' or 'bf16'), or autocast switched off for 'fp32'.

    'fp32' disables an enclosing autocast on purpose: a caller asking for fp32 gets fp32 even when
    it runs inside the student's mixed-precision region.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; use one of {list(PRECISIONS)}")
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=AMP_DTYPES[precision])


def kaiming_init_(model: nn.Module) -> None:
    """MobileFaceNet init (host and paper): conv and linear kaiming-normal (fan_out, relu), BN 1/0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def reject_dropout(name: str, dropout: float) -> None:
    """MobileFaceNets and ViTs have no dropout before the head: fail instead of ignoring it as the host does."""
    if dropout:
        raise ValueError(f"{name} has no dropout before its head (arcface_torch ignores it); set dropout=0, "
                         f"got {dropout}")


def conv3x3(in_c: int, out_c: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_c, out_c, kernel_size=3, stride=stride, padding=1, bias=False)


def stem_conv(out_c: int, stride: int) -> nn.Conv2d:
    """The IR stem: the host's 3x3 conv (stride 1), or an s x s stride-s patch conv (demo and test models)."""
    return conv3x3(3, out_c) if stride == 1 else nn.Conv2d(3, out_c, kernel_size=stride, stride=stride, bias=False)


def halved(side: int, times: int) -> int:
    """The map side after `times` stride-2, padding-1 3x3 convs (it fixes the flattened size of a head)."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


class FaceBackbone(nn.Module, abc.ABC):
    """(B, 3, H, W) normalised RGB -> (B, E) un-normalised float32 embedding.

    Subclasses split their network into `forward_features` (the trunk, autocast when `fp16`) and
    `forward_head` (always fp32 when `fp16`). With `fp16=False` no autocast context is entered, so
    a caller's own autocast (e.g. the teacher precision) applies to the whole network.
    """

    def __init__(self, fp16: bool = False, amp_dtype: Optional[str] = None) -> None:
        super().__init__()
        if amp_dtype is not None:
            amp_dtype_for("cpu", amp_dtype)  # validate now, not at the first forward
        self.fp16 = bool(fp16)
        self.amp_dtype = amp_dtype

    @abc.abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """The trunk: (B, 3, H, W) -> whatever the head consumes."""

    @abc.abstractmethod
    def forward_head(self, x: Tensor) -> Tensor:
        """The head: trunk output -> (B, E) embedding."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.fp16:
            return self.forward_head(self.forward_features(x)).float()
        device_type = x.device.type
        with torch.autocast(device_type, dtype=amp_dtype_for(device_type, self.amp_dtype)):
            features = self.forward_features(x)
        with torch.autocast(device_type, enabled=False):
            return self.forward_head(features.float()).float()
