"""The backbone registry and the per-backbone facts (`BackboneSpec`) that other packages read.

The teacher loader, the exporter and the evaluation code take the input size, the normalisation and
the default embedding size from here instead of repeating the numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Tuple

from torch import nn

from insightface_adadistill.registry import Registry


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a consumer must know about a backbone without building it.

    Attributes:
        description: one line for `list_backbones` tables and the README.
        source: where the architecture (and its state-dict layout) comes from.
        input_size: (height, width) of the aligned face crop.
        mean, std: pixel normalisation, x = (p - mean) / std on RGB uint8 values.
        embedding_size: default `num_features`.
        channels: the channel order the network's layers (and so its published weight files) were
            trained on. Every backbone takes RGB at `forward`; a 'BGR' network (AdaFace's IR) reverses
            the channels itself, so teacher, student, evaluation and ONNX export need no special case.
    """

    description: str = ""
    source: str = "this project"
    input_size: Tuple[int, int] = (112, 112)
    mean: float = 127.5
    std: float = 127.5
    embedding_size: int = 512
    channels: str = "RGB"


BACKBONES: Registry[nn.Module] = Registry("backbone")


def register_backbone(fn: Callable[..., nn.Module] | None = None, *, spec: BackboneSpec | None = None):
    """Register a backbone factory under its function name; usable bare or as `(spec=...)`.

    A spec without a description takes the first line of the factory's docstring.
    """

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        entry = spec or BackboneSpec()
        if not entry.description:
            doc = (factory.__doc__ or "").strip().splitlines()
            entry = dataclasses.replace(entry, description=doc[0] if doc else factory.__name__)
        return BACKBONES.register(factory, spec=entry)

    return add(fn) if fn is not None else add


def register_variant(name: str, description: str, build: Callable[..., nn.Module], spec: BackboneSpec,
                     **fixed: Any) -> None:
    """Register `name` as `build(**fixed, **kwargs)`: one call per published size instead of one function.

    A kwarg that repeats one of `fixed` is a TypeError, as with a hand-written factory.
    """

    def factory(**kwargs: Any) -> nn.Module:
        return build(**fixed, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    register_backbone(factory, spec=dataclasses.replace(spec, description=description))
