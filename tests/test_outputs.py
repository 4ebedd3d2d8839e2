"""`claim_output`: one guard for every output folder (file, read-only, other job, lock)."""
from __future__ import annotations

import errno
import multiprocessing
from pathlib import Path

import pytest

from insightface_adadistill import outputs
from insightface_adadistill.outputs import KIND_FILE, OutputFolderError, claim_output


def test_claims_creates_and_records_the_job(tmp_path: Path) -> None:
    with claim_output(tmp_path / "a" / "run", "train") as folder:
        assert folder.is_dir() and (folder / KIND_FILE).is_file()
    with claim_output(tmp_path / "a" / "run", "train", resume=True):
        pass  # the same job may come back; the lock was released


def test_a_file_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("notes")
    with pytest.raises(OutputFolderError, match=f"output {target} is a file, not a folder"):
        with claim_output(target, "train"):
            pass
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        with claim_output(target / "run", "train"):  # a file on the way (Errno 20)
            pass
    assert target.read_text() == "notes"


def test_read_only_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(OutputFolderError, match=f"output {tmp_path} cannot be written .read-only filesystem"):
        with claim_output(tmp_path, "train"):
            pass


def test_another_jobs_folder_is_refused(tmp_path: Path) -> None:
    with claim_output(tmp_path, "make-synthetic") as folder:
        (folder / "manifest.json").write_text("{}")
    with pytest.raises(OutputFolderError, match=r"holds a dataset \(made by `adadistill make-synthetic`.*not a training run; choose another folder, or pass --set overwrite=True"):
        with claim_output(tmp_path, "train"):
            pass


def _hold(path: str, ready, release) -> None:
    with claim_output(path, "train") as folder:
        (folder / "training.log").write_text("")
        ready.set()
        release.wait(30)


def test_a_second_claim_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputFolderError, match=rf"in use by another job \(`adadistill train`, pid {holder.pid}"):
            with claim_output(tmp_path, "train"):
                pass
    finally:
        release.set()
        holder.join(30)
    with claim_output(tmp_path, "train"):
        pass  # free again once the holder exits


def test_filesystems_without_locks_degrade_to_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with claim_output(tmp_path, "train"):
        (tmp_path / "training.log").write_text("")
    assert "does not support file locks" in caplog.text
    assert outputs.LOCK_FILE in {p.name for p in tmp_path.iterdir()}
