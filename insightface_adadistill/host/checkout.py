"""Recognise an arcface_torch checkout before running anything of it.

`host-train` relies on four things of `recognition/arcface_torch` (docs/host-train.md): `train_v2.py`,
`configs/base.py`, `backbones.get_model(name, **kwargs)` and `partial_fc_v2.PartialFC_V2`. A checkout
that lacks one is refused here, naming the file and what was expected, instead of failing halfway
through the host's start-up.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

from insightface_adadistill.errors import UserError

class HostCheckoutError(UserError, ValueError):
    """The folder given as ARCFACE_TORCH_DIR is not an arcface_torch checkout host-train can drive."""


@dataclass(frozen=True)
class HostCheckout:
    """Paths of a checkout that passed the file checks."""

    root: Path

    @property
    def train_script(self) -> Path:
        return self.root / "train_v2.py"


def _defines(path: Path, kind: type, name: str) -> bool:
    """Whether the file's top level defines `name` as a class (ast.ClassDef) or a function."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise HostCheckoutError(f"{path}: not valid Python ({err.msg}, line {err.lineno})") from err
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if kind is ast.FunctionDef else (kind,)
    return any(isinstance(node, kinds) and node.name == name for node in tree.body)


def check_checkout(root: str | os.PathLike) -> HostCheckout:
    """Check the checkout's files without importing them; raise `HostCheckoutError` on the first gap."""
    root = Path(root).resolve()
    hint = "pass the arcface_torch folder of an insightface checkout (recognition/arcface_torch)"
    if not root.is_dir():
        raise HostCheckoutError(f"{root} is not a folder; {hint}")
    required = [
        (root / "train_v2.py", None, None, "the training script train_v2.py"),
        (root / "configs" / "base.py", None, None,
         "configs/base.py, which train_v2.py's config loader imports first"),
        (root / "partial_fc_v2.py", ast.ClassDef, "PartialFC_V2", "a top-level class PartialFC_V2"),
        (root / "backbones" / "__init__.py", ast.FunctionDef, "get_model", "a top-level function get_model"),
    ]
    for path, kind, name, expected in required:
        if not path.is_file():
            raise HostCheckoutError(f"{path} not found: host-train expects {expected}; {hint}")
        if kind is not None and not _defines(path, kind, name):
            raise HostCheckoutError(f"{path} does not define {name}: host-train expects {expected}, "
                                    f"which train_v2.py imports")
    return HostCheckout(root)


@contextmanager
def host_import_path(checkout: HostCheckout) -> Iterator[None]:
    """The checkout first on sys.path, as when train_v2.py runs from its own folder; restored after."""
    saved = list(sys.path)
    sys.path.insert(0, str(checkout.root))
    try:
        yield
    finally:
        sys.path[:] = saved


def import_host_module(checkout: HostCheckout, name: str) -> ModuleType:
    """Import the checkout's module `name` under its own name (train_v2.py's `from name import ...`),
    inside `host_import_path`; one of that name imported earlier from elsewhere is dropped first."""
    cached = sys.modules.get(name)
    if cached is not None and not str(getattr(cached, "__file__", "") or "").startswith(str(checkout.root)):
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    path = checkout.root / (f"{name}/__init__.py" if name == "backbones" else f"{name}.py")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise  # a missing dependency: `environment.missing_modules_named` names it and its install
    except Exception as err:  # the user's code can raise anything: name the file, keep the cause
        raise HostCheckoutError(f"importing {path} failed with {type(err).__name__}: {err}") from err


def _accepts(function: Callable, *args: object, **kwargs: object) -> bool:
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def check_host_api(checkout: HostCheckout, backbones: ModuleType, partial_fc_v2: ModuleType) -> None:
    """Refuse a `get_model` or `PartialFC_V2` that train_v2.py could not call the documented way."""
    get_model = getattr(backbones, "get_model", None)
    if not callable(get_model) or not _accepts(get_model, "r50", dropout=None, fp16=None, num_features=None):
        signature = inspect.signature(get_model) if callable(get_model) else "missing"
        raise HostCheckoutError(
            f"{checkout.root / 'backbones' / '__init__.py'}: get_model{signature} cannot be called as "
            f"get_model(name, dropout=..., fp16=..., num_features=...), the way train_v2.py builds the "
            f"student; host-train expects arcface_torch's get_model(name, **kwargs)")
    partial_fc = getattr(partial_fc_v2, "PartialFC_V2", None)
    if not inspect.isclass(partial_fc) or not _accepts(partial_fc, None, 512, 1000, 1.0, False):
        raise HostCheckoutError(
            f"{checkout.root / 'partial_fc_v2.py'}: PartialFC_V2 must be a class taking (margin_loss, "
            f"embedding_size, num_classes, sample_rate, fp16), as arcface_torch's train_v2.py calls it")
