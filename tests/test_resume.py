"""What `resume=True` checks: the per-key table and `resume_point` on every kind of folder."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from insightface_adadistill.config import load_config
from insightface_adadistill.config.defaults import HARMLESS, IDENTITY, SCHEDULE, known_keys
from insightface_adadistill.outputs import OutputFolderError
from insightface_adadistill.serialization import save_file_atomic
from insightface_adadistill.training.checkpoint import (CONTENT, RESUME_RULES, ResumeError, compare_configs,
                                                        config_snapshot, resume_point)
from insightface_adadistill.training.checkpoint.sets import save_checkpoint_set

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny_cpu.py"


def test_every_declared_key_is_classified() -> None:
    assert set(RESUME_RULES) == set(known_keys())
    assert set(RESUME_RULES.values()) == {IDENTITY, SCHEDULE, HARMLESS}


def test_compare_classifies_and_ignores_the_folder_name() -> None:
    saved = {"network": "r50", "margin_list": (1.0, 0.5, 0.0), "lr": 0.1, "frequent": 10, "output": "a/run",
             "config_name": "run"}
    current = {"network": "r50", "margin_list": [1.0, 0.0, 0.4], "lr": 0.2, "frequent": 50,
               "output": "b/copy", "batch_size": 128}
    diff = compare_configs(saved, current)
    assert diff.identity == [("margin_list", (1.0, 0.5, 0.0), [1.0, 0.0, 0.4])]
    assert diff.schedule == [("lr", 0.1, 0.2)]
    assert diff.harmless == [("frequent", 10, 50), ("output", "a/run", "b/copy")]
    assert diff.unchecked == ["batch_size"]
    assert compare_configs({"margin_list": [1.0, 0.5, 0.0], "lr": 1}, {"margin_list": (1.0, 0.5, 0.0), "lr": 1.0}) \
        == compare_configs({}, {})


def test_content_keys_compare_by_hash_and_name_both_paths() -> None:
    saved = {"teacher_cache": "/a/cache", "teacher_cache_sha256": "0" * 64, "rec": "/data/a", "rec_sha256": "1" * 64}
    moved = {**saved, "teacher_cache": "/b/cache", "rec": "/data/b"}
    assert compare_configs(saved, moved).schedule == [] and [c[0] for c in compare_configs(saved, moved).harmless] \
        == ["teacher_cache", "rec"]
    rebuilt = {**moved, "teacher_cache_sha256": "2" * 64}
    assert compare_configs(saved, rebuilt).schedule == [
        ("teacher_cache", "/a/cache (sha256 000000000000)", "/b/cache (sha256 222222222222)")]
    assert compare_configs({}, rebuilt).unchecked == ["teacher_cache", "teacher_cache_sha256", "rec", "rec_sha256"]
    assert set(CONTENT.values()) <= set(RESUME_RULES)  # each hash names a config key


def _snapshot(output: Path, *overrides: str, world_size: int = 1) -> dict:
    return config_snapshot(load_config(TINY, [f"output={output}", *overrides], world_size=world_size).as_dict())


def _set_with(output: Path, fingerprint: dict) -> Path:
    checkpoint = {"rank": 0, "world_size": 1, "global_step": 4, "epoch": 0, "format_version": 1}
    return save_checkpoint_set(output, checkpoint, fingerprint=fingerprint)


def test_identity_changes_are_refused_naming_both_values(tmp_path: Path) -> None:
    latest = _set_with(tmp_path, _snapshot(tmp_path))
    snapshot = _snapshot(tmp_path, "margin_list=(1.0,0.0,0.4)")
    with pytest.raises(ResumeError,
                       match=r"different run \(margin_list: \[1.0, 0.5, 0.0\] saved, \[1.0, 0.0, 0.4\] now"):
        resume_point(tmp_path, snapshot, resume=True, allow_changes=True)
    assert resume_point(tmp_path, _snapshot(tmp_path), True, False) == latest


def test_schedule_changes_need_consent_and_are_logged(tmp_path: Path, caplog) -> None:
    latest = _set_with(tmp_path, _snapshot(tmp_path))
    changed = _snapshot(tmp_path, "lr=0.2", "batch_size=8")
    with pytest.raises(ResumeError, match=r"lr: 0.1 saved, 0.2 now.*resume_allow_changes=True"):
        resume_point(tmp_path, changed, resume=True, allow_changes=False)
    with caplog.at_level(logging.INFO):
        assert resume_point(tmp_path, changed, resume=True, allow_changes=True) == latest
    assert "batch_size: 16 saved, 8 now" in caplog.text and "total_step: 16 saved, 32 now" in caplog.text
    world_two = _snapshot(tmp_path, world_size=2)
    with pytest.raises(ResumeError, match="total_batch_size: 16 saved, 32 now"):
        resume_point(tmp_path, world_two, resume=True, allow_changes=False)


def test_a_moved_run_resumes_with_harmless_changes_logged(tmp_path: Path, caplog) -> None:
    _set_with(tmp_path / "old", _snapshot(tmp_path / "old"))
    (tmp_path / "old").rename(tmp_path / "new")
    with caplog.at_level(logging.INFO):
        found = resume_point(tmp_path / "new", _snapshot(tmp_path / "new", "frequent=2"),
                             resume=True, allow_changes=False)
    assert found == tmp_path / "new" / "checkpoints" / "step_000000004"
    assert "frequent: 4 saved, 2 now" in caplog.text and "output:" in caplog.text


def test_resume_refuses_to_retrain_over_a_finished_run(tmp_path: Path) -> None:
    save_file_atomic({"w": torch.ones(1)}, tmp_path / "model.pt")
    snapshot = _snapshot(tmp_path)
    with pytest.raises(ResumeError, match="no checkpoint set to resume from.*overwrite its model.pt"):
        resume_point(tmp_path, snapshot, resume=True, allow_changes=False)
    with pytest.raises(OutputFolderError, match=r"already holds a run \(model.pt\); set resume=True"):
        resume_point(tmp_path, snapshot, resume=False, allow_changes=False)


def test_a_host_folder_gets_one_message_with_the_conversion(tmp_path: Path) -> None:
    torch.save({"epoch": 1}, tmp_path / "checkpoint_gpu_0.pt")
    with pytest.raises(ResumeError, match=f"adadistill convert-host-checkpoint {tmp_path}"):
        resume_point(tmp_path, _snapshot(tmp_path), resume=True, allow_changes=False)


def test_an_empty_folder_starts_from_scratch(tmp_path: Path, caplog) -> None:
    snapshot = _snapshot(tmp_path)
    assert resume_point(tmp_path, snapshot, resume=False, allow_changes=False) is None
    assert resume_point(tmp_path, snapshot, resume=True, allow_changes=False) is None
    assert "starting from scratch" in caplog.text


def test_converted_host_sets_are_compared_on_what_they_hold(tmp_path: Path, caplog) -> None:
    converted = {"num_classes": 16, "embedding_size": 64}  # what convert-host-checkpoint records
    latest = _set_with(tmp_path, converted)
    assert resume_point(tmp_path, _snapshot(tmp_path), True, False) == latest
    assert "not compared with this run" in caplog.text and "network" in caplog.text
    with pytest.raises(ResumeError, match="num_classes: 16 saved, 15 now"):
        resume_point(tmp_path, _snapshot(tmp_path, "num_classes=15"), True, False)


def test_the_safety_page_lists_every_key_in_its_class() -> None:
    rows = {line.split("|")[1].strip(): line for line in (REPO / "docs" / "safety.md").read_text().splitlines()
            if line.startswith(("| identity |", "| schedule |", "| harmless |"))}
    for key, rule in RESUME_RULES.items():
        assert f"`{key}`" in rows[rule], f"docs/safety.md: {key} missing from the {rule} row"
