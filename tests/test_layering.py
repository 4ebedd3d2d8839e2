"""Dependencies point one way (style.md example 2): leaves never import the layers above them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "insightface_adadistill"

# layer -> the package-internal layers it may import (besides itself)
ALLOWED = {
    "registry": set(),
    "serialization": set(),
    "distributed": set(),
    "config": {"registry"},
    "data": {"registry", "distributed", "serialization"},
    "backbones": {"registry", "serialization"},
    "heads": {"registry", "distributed"},
    "teacher": {"backbones", "registry", "serialization"},
    "evaluation": {"backbones", "teacher", "data", "registry", "serialization", "distributed"},
    "export": {"backbones", "teacher", "data", "registry", "serialization"},
    "training": {"config", "data", "backbones", "heads", "teacher", "evaluation", "registry",
                 "serialization", "distributed"},
    # a fixture generator: writes real file formats through the data and evaluation writers
    "synthetic": {"data", "evaluation", "backbones", "registry", "serialization", "distributed"},
    "demo": {"config", "data", "backbones", "heads", "teacher", "evaluation", "export", "training",
             "synthetic", "registry", "serialization", "distributed"},
    "cli": set(),  # dispatches by module name only
    "__init__": set(),
    "__main__": {"cli"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_layers(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = path.relative_to(PACKAGE).parts[: -node.level]
                parts = list(base) + node.module.split(".")
                yield parts[0].removesuffix(".py") if parts else ""
            elif node.module.startswith("insightface_adadistill."):
                yield node.module.split(".")[1]
            elif node.module == "insightface_adadistill":
                for alias in node.names:
                    yield alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("insightface_adadistill."):
                    yield alias.name.split(".")[1]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_back_edges(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{layer} is a new layer: add it to ALLOWED in {__file__}"
    bad = {imp for imp in _imported_layers(path) if imp != layer and imp not in ALLOWED[layer]}
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(bad)}: a back-edge"


def test_import_has_no_side_effects() -> None:
    import subprocess
    import sys

    code = ("import torch, insightface_adadistill as p; import torch.distributed as d; "
            "assert not d.is_initialized(); assert not torch.cuda.is_initialized(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
