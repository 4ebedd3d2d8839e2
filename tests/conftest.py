"""Shared pytest fixtures: where the MXNet-written fixtures live, and a seeded RNG."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    """`../shared/fixtures` beside the checkout, or $ADADISTILL_FIXTURES."""
    return Path(os.environ.get("ADADISTILL_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    if not (root / "manifest.json").is_file():
        pytest.fail(f"fixtures not found at {root}; set ADADISTILL_FIXTURES to the shared/fixtures folder")
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
