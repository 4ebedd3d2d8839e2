"""Whether this Python can run the checkout's train_v2.py, checked before the host starts.

host-train runs the host's code in our process, so its dependencies must be installed next to ours
(docs/host-train.md, "Installing"). A module train_v2.py imports at load time that is missing (found
by reading the imports with `ast` before anything runs, or when a later import fails), mxnet 1.9.1
next to numpy >= 1.24 (no `np.bool`), and an `lr_scheduler.py` passing the `verbose=` torch 2.7 removed each
become one line naming the file, the module and the fix, not a traceback from inside the host. The
user's files are never edited (`--compatible-lr-scheduler` drops `verbose=` for the run only).
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Set
from unittest.mock import patch

import numpy as np
import torch
from torch.optim import lr_scheduler as torch_lr_scheduler

from insightface_adadistill.errors import UserError
from insightface_adadistill.host.checkout import HostCheckout, HostCheckoutError

INSTALL_DOC = "docs/host-train.md, 'Installing'"
# pip requirements for modules arcface_torch imports whose package name differs or needs a pin.
PIP_NAMES: Dict[str, str] = {
    "mxnet": '"mxnet==1.9.1" "numpy<1.24"',
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "nvidia": "--extra-index-url https://pypi.nvidia.com nvidia-dali-cuda120",
}
NUMPY_WITHOUT_BOOL = (1, 24)  # numpy 1.24 removed the np.bool alias that mxnet 1.9.1 uses at import


class HostEnvironmentError(UserError, RuntimeError):
    """This Python lacks something the checkout's train_v2.py needs; the message says what to install."""


def _pip_name(module: str) -> str:
    """What to pip install for a top-level module; torchvision 0.(N+15) is the release for torch 2.N."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    if module == "torchvision" and major == 2:
        return f'"torchvision==0.{minor + 15}.*"'
    return PIP_NAMES.get(module, module)


def _missing_message(where: Path, module: str) -> str:
    return (f"{where} imports {module}, which this Python does not have; install it with "
            f"`{sys.executable} -m pip install {_pip_name(module.split('.')[0])}` ({INSTALL_DOC})")


def _local_module(checkout: HostCheckout, package: Path, module: str, level: int) -> Optional[Path]:
    """What an import names inside the checkout (`x.y` -> x/y.py, x/y/__init__.py or the folder x/y
    of a namespace package), or None when the module comes from elsewhere."""
    base = checkout.root if level == 0 else package
    for _ in range(max(level - 1, 0)):
        base = base.parent
    target = base.joinpath(*module.split(".")) if module else base
    candidates = [target / "__init__.py", target] + ([target.with_suffix(".py")] if module else [])
    return next((c for c in candidates if c.is_file() or (c.is_dir() and c != checkout.root)), None)


def external_imports(checkout: HostCheckout) -> Dict[str, Path]:
    """Top-level modules outside the checkout that loading train_v2.py imports, with the first
    checkout file that imports each (following the checkout's own modules transitively)."""
    found: Dict[str, Path] = {}
    seen: Set[Path] = set()
    queue = [checkout.train_script]
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:  # not in functions or `try`
            if isinstance(node, ast.Import):
                targets = [(alias.name, 0, True) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # `from m import a, b`: a and b may be checkout submodules
                module = node.module or ""
                targets = [(module, node.level, True)] + [
                    (f"{module}.{alias.name}".strip("."), node.level, False) for alias in node.names]
            else:
                continue
            for module, level, may_be_external in targets:
                local = _local_module(checkout, path.parent, module, level)
                if local is not None and local.is_file():
                    queue.append(local)
                elif local is None and may_be_external and level == 0 and module:
                    found.setdefault(module.split(".")[0], path)
    return found


def check_host_environment(checkout: HostCheckout) -> None:
    """Raise `HostEnvironmentError` for a module train_v2.py imports at load time that is missing here,
    or for mxnet next to a numpy it cannot import with."""
    modules = external_imports(checkout)
    for module, where in sorted(modules.items()):
        if module not in sys.stdlib_module_names and module not in sys.modules and not importlib.util.find_spec(module):
            raise HostEnvironmentError(_missing_message(where, module))
    numpy_version = tuple(int(part) for part in np.__version__.split(".")[:2])
    if "mxnet" in modules and numpy_version >= NUMPY_WITHOUT_BOOL:
        raise HostEnvironmentError(
            f"{modules['mxnet']} imports mxnet, and mxnet 1.9.1 fails to import with numpy {np.__version__} "
            f"(it uses np.bool, removed in numpy 1.24); install numpy 1.23 with "
            f"`{sys.executable} -m pip install \"numpy<1.24\"` ({INSTALL_DOC})")


@contextmanager
def missing_modules_named(checkout: HostCheckout) -> Iterator[None]:
    """A module the host fails to import while it runs (e.g. timm for a ViT) becomes one line."""
    try:
        yield
    except ModuleNotFoundError as err:
        if not err.name:
            raise
        frames = [Path(frame.filename) for frame in traceback.extract_tb(err.__traceback__)]
        inside = [path for path in frames if checkout.root in path.parents]
        where = inside[-1] if inside else checkout.train_script
        if _local_module(checkout, checkout.root, err.name.split(".")[0], 0) is not None:
            raise HostCheckoutError(f"{where}: {err}, a module the checkout itself should hold") from err
        raise HostEnvironmentError(_missing_message(where, err.name)) from err


def _kept_args(call: ast.Call) -> int:
    """Positional arguments before `verbose`: (optimizer, last_epoch), after `self` unless through super()."""
    return 2 if isinstance(call.func.value, ast.Call) else 3


def _passes_verbose(call: ast.Call) -> bool:
    """`super().__init__(optimizer, last_epoch, verbose)` or `...(..., verbose=...)`."""
    return isinstance(call.func, ast.Attribute) and call.func.attr == "__init__" and (
        any(k.arg == "verbose" for k in call.keywords) or len(call.args) > _kept_args(call))


def _scheduler_init_calls(tree: ast.Module) -> Iterator[ast.Call]:
    """`__init__` calls passing verbose inside classes derived from (_)LRScheduler."""
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef) and any(ast.unparse(b).endswith("LRScheduler") for b in cls.bases):
            yield from (node for node in ast.walk(cls) if isinstance(node, ast.Call) and _passes_verbose(node))


def lr_scheduler_problem(checkout: HostCheckout) -> Optional[str]:
    """What to change in lr_scheduler.py when it passes `verbose=` and this torch rejects it, else None."""
    path = checkout.root / "lr_scheduler.py"
    if "verbose" in inspect.signature(torch_lr_scheduler.LRScheduler.__init__).parameters or not path.is_file():
        return None
    source = path.read_text(encoding="utf-8")
    for node in _scheduler_init_calls(ast.parse(source, str(path))):
        fixed = ast.Call(node.func, node.args[:_kept_args(node)], [k for k in node.keywords if k.arg != "verbose"])
        return (f"{path}:{node.lineno}: `{ast.get_source_segment(source, node)}` passes verbose= to "
                f"LRScheduler.__init__, which torch {torch.__version__} no longer accepts (removed in "
                f"torch 2.7), so train_v2.py would fail when it builds its schedule; change it to "
                f"`{ast.unparse(fixed)}`, or pass --compatible-lr-scheduler to let "
                f"LRScheduler.__init__ ignore verbose= for this run only")
    return None


@contextmanager
def lr_scheduler_without_verbose() -> Iterator[None]:
    """For the run only: `LRScheduler.__init__` drops a `verbose` argument instead of raising, so the
    host's own scheduler, with its own arithmetic, runs unchanged on this torch."""
    original = torch_lr_scheduler.LRScheduler.__init__

    def init(self, optimizer, last_epoch=-1, verbose=None):  # noqa: ARG001 (torch < 2.7's signature)
        original(self, optimizer, last_epoch)

    with patch.object(torch_lr_scheduler.LRScheduler, "__init__", init):
        yield
