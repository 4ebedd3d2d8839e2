"""Shared pytest fixtures: where the MXNet-written fixtures live, and a seeded RNG."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    """A copy of the MXNet-written fixtures committed in tests/fixtures (`make fixtures` rewrites
    them): what the tests write beside a dataset (label caches) stays out of the checkout."""
    copy = tmp_path_factory.mktemp("fixtures") / "fixtures"
    shutil.copytree(FIXTURES, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return copy


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
