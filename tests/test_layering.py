"""Dependencies point one way (style.md example 2): leaves never import the layers above them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "insightface_adadistill"

# layer -> the package-internal layers it may import (besides itself)
ALLOWED = {
    "errors": set(),
    "registry": set(),
    "serialization": set(),
    "distributed": set(),
    "outputs": set(),
    "config": {"registry", "backbones", "heads", "teacher"},
    "data": {"registry", "distributed", "serialization"},
    "backbones": {"registry", "serialization"},
    "heads": {"registry", "distributed"},
    "teacher": {"backbones", "registry", "serialization"},
    "cache": {"teacher", "data", "backbones", "registry", "serialization", "distributed"},
    "evaluation": {"backbones", "teacher", "data", "registry", "serialization", "distributed"},
    "export": {"backbones", "teacher", "data", "registry", "serialization"},
    "training": {"config", "data", "backbones", "heads", "teacher", "cache", "evaluation", "registry",
                 "serialization", "distributed"},
    # a fixture generator: writes real file formats through the data and evaluation writers
    "synthetic": {"data", "evaluation", "backbones", "registry", "serialization", "distributed"},
    "demo": {"config", "data", "backbones", "heads", "teacher", "evaluation", "export", "training",
             "synthetic", "registry", "serialization", "distributed"},
    # the host-train bridge: registers heads and the teacher into a user's arcface_torch checkout
    "host": {"heads", "teacher", "backbones", "config", "data", "distributed", "registry", "serialization"},
    # commands may call any library layer; only cli (and through it __main__) imports them
    "commands": {"config", "data", "backbones", "heads", "teacher", "cache", "evaluation", "export", "training",
                 "synthetic", "demo", "host", "registry", "serialization", "distributed"},
    "cli": {"commands", "__version__"},  # __version__: the package's own, for `adadistill --version`
    "__init__": set(),
    "__main__": {"cli"},
}
EVERYWHERE = {"errors", "outputs"}  # leaves every layer may import: user-error types, the output guard


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
    bad = {imp for imp in _imported_layers(path) if imp != layer and imp not in ALLOWED[layer] | EVERYWHERE}
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(bad)}: a back-edge"


def test_cli_imports_every_command_module() -> None:
    """The dispatcher's edges are static imports: every module in commands/ is a registered command."""
    from insightface_adadistill import cli

    modules = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "common"}
    assert {m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS.values()} == modules
    assert all(callable(m.main) and m.SUMMARY for m in cli.COMMANDS.values())


def test_help_does_not_import_torch() -> None:
    """`adadistill --help` stays instant: the command modules import the library only in main()."""
    import subprocess
    import sys

    code = ("import sys; from insightface_adadistill import cli; cli.main(['--help']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_import_has_no_side_effects() -> None:
    import subprocess
    import sys

    code = ("import torch, insightface_adadistill as p; import torch.distributed as d; "
            "assert not d.is_initialized(); assert not torch.cuda.is_initialized(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
