"""`adadistill` itself: the command table, the environment it sets, and how user errors are shown."""
from __future__ import annotations

import os

import pytest

from insightface_adadistill import cli


def test_help_lists_every_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in cli.COMMANDS)


def test_unknown_command_exits_2(capsys) -> None:
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_sets_passive_openmp_waiting_unless_set(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
