"""Safe, atomic checkpoint files shared by the trainer, the teacher loader and the exporter.

Loading always uses `torch.load(weights_only=True)` and never falls back to full unpickling:
releases before torch 2.10 had `weights_only` bypasses, so we refuse to run on them.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from insightface_adadistill.errors import InputNotFoundError, WeightsError
from insightface_adadistill.outputs import atomic_write

MIN_TORCH = (2, 10)
# classes a Lightning .ckpt keeps its hyper-parameters in: plain records, safe to allow-list for extraction
HYPERPARAMETER_TYPES = ("argparse.Namespace", "pytorch_lightning.utilities.parsing.AttributeDict",
                        "lightning.fabric.utilities.data.AttributeDict")


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """Load a torch checkpoint with `weights_only=True`; errors name the file and the fix.

    `mmap=True` maps the tensors instead of reading them, for a look at a large file's small entries.
    """
    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
        raise RuntimeError(
            f"torch {torch.__version__} is too old to load checkpoints safely (weights_only had "
            f"bypasses before 2.10); install torch>={'.'.join(map(str, MIN_TORCH))}"
        )
    path = Path(path)
    if path.is_dir():
        raise InputNotFoundError(f"{path} is a folder, not a weights file; name the file inside it "
                                 f"(e.g. {path / 'model.pt'})")
    if not path.is_file():
        raise InputNotFoundError(f"{path}: checkpoint file not found; check the path in your config")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # torch's text would advise weights_only=False: never relay it
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise WeightsError(_refused_object(path, found.group(1) if found else None)) from None
    except Exception as exc:
        raise WeightsError(
            f"{path}: not a torch checkpoint ({_what_it_is(path)}): a file written by torch.save is a zip "
            "archive (or a legacy pickle); check the path, or re-save the weights with "
            "torch.save(model.state_dict(), path)") from exc


def _what_it_is(path: Path) -> str:
    """A few words on a file torch cannot read: its size and how it starts."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK"):
        return f"a zip archive of {size} bytes that is truncated or not torch's layout"
    return f"{size} bytes starting with {head!r}"


def _refused_object(path: Path, name: Optional[str]) -> str:
    """The fix for a file that keeps a Python object (of class `name`, if torch named it) beside its tensors.

    A Lightning `.ckpt` (AdaFace's) may hold its hyper-parameters as an `argparse.Namespace`: the fix
    extracts its `state_dict` once with that one record class allow-listed. Any other class is left
    to the program that wrote the file (allow-listing an unknown global could run its code).
    """
    kind = f"an object of type {name}" if name else "Python objects"
    refused = f"{path}: cannot be loaded as a weights-only torch checkpoint: it holds {kind} besides tensors"
    if name not in HYPERPARAMETER_TYPES:
        return (f"{refused}; save the state_dict alone from the program that wrote it "
                "(torch.save(model.state_dict(), path)) and pass that file")
    out = path.with_name(f"{path.stem}_state_dict.pt")
    extract = (f"import torch, {name.rsplit('.', 1)[0]}; torch.serialization.add_safe_globals([{name}]); "
               f"torch.save(torch.load({str(path)!r}, weights_only=True)['state_dict'], {str(out)!r})")
    return (f"{refused} (a Lightning checkpoint's hyper-parameters); extract the weights once with "
            f"python -c \"{extract}\" and pass {out}")


def save_file_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` through `atomic_write`: a checkpoint file is either the old one or the new one."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def write_json_atomic(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Indented JSON through `atomic_write` (manifests and markers that readers poll)."""
    return atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))
