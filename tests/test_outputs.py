"""`claim_output`: one guard for every output folder (file, read-only, other job, lock)."""
from __future__ import annotations

import errno
import multiprocessing
from pathlib import Path

import pytest

from insightface_adadistill import outputs
from insightface_adadistill.outputs import KIND_FILE, OutputFolderError, claim_file, claim_output, folder_kind, staged


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


def test_folders_made_before_the_kind_record_are_recognised(tmp_path: Path) -> None:
    signs = {"model.pt": "run", "checkpoint_gpu_0.pt": "run", "training.log": "run", "train.rec": "dataset",
             "embeddings.npy": "cache", "ijbc.json": "evaluation", ".adadistill-demo": "demo"}
    for name, kind in signs.items():
        folder = tmp_path / name.strip(".")
        folder.mkdir()
        (folder / name).write_text("")
        assert folder_kind(folder) == kind, name
    (tmp_path / "synth" / "train").mkdir(parents=True)
    (tmp_path / "synth" / "train" / "train.rec").write_text("")
    assert folder_kind(tmp_path / "synth") == "dataset" and folder_kind(tmp_path / "plain") is None


def test_a_refused_claim_leaves_nothing_behind(tmp_path: Path) -> None:
    def refuse(folder: Path) -> None:
        assert (folder / outputs.LOCK_FILE).is_file()  # the check runs under the lock
        raise OutputFolderError("no")

    with pytest.raises(OutputFolderError, match="no"):
        with claim_output(tmp_path / "new" / "run", "train", check=refuse):
            pass
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / outputs.LOCK_FILE).write_text("previous holder\n")
    with pytest.raises(OutputFolderError):
        with claim_output(old, "train", check=refuse):
            pass
    assert sorted(p.name for p in old.iterdir()) == [outputs.LOCK_FILE]
    assert (old / outputs.LOCK_FILE).read_text() == "previous holder\n"


def test_a_claim_that_wrote_nothing_is_undone(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with claim_output(tmp_path / "out", "make-rec"):
            raise RuntimeError("bad input")
    assert not (tmp_path / "out").exists()


def test_staged_outputs_appear_whole_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged(tmp_path) as stage:
            (stage / "train").mkdir()
            (stage / "train" / "new.txt").write_text("half")
            raise RuntimeError("failed midway")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["train", "train/old.txt"]
    with staged(tmp_path) as stage:
        (stage / "train").mkdir()
        (stage / "train" / "new.txt").write_text("whole")
        (stage / "manifest.json").write_text("{}")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "manifest.json", "train", "train/new.txt"]


def test_single_files_are_refused_when_they_exist_or_are_folders(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_text("shipped")
    with pytest.raises(OutputFolderError, match=r"m.onnx exists; choose another file name, or pass --overwrite"):
        claim_file(tmp_path / "m.onnx", "export-onnx")
    assert claim_file(tmp_path / "m.onnx", "export-onnx", overwrite=True) == tmp_path / "m.onnx"
    with pytest.raises(OutputFolderError, match=rf"{tmp_path} is a folder; `adadistill export-onnx` writes a file"):
        claim_file(tmp_path, "export-onnx", example="model.onnx")
    with pytest.raises(OutputFolderError, match="m.onnx is a file, not a folder"):
        claim_file(tmp_path / "m.onnx" / "x.onnx", "export-onnx")


def test_a_fixed_file_name_is_refused_with_the_flag_alone(tmp_path):
    """A `.rec`'s index cannot take another name: the refusal offers only the flag."""
    index = tmp_path / "train.idx"
    index.write_text("0\t0\n")
    with pytest.raises(OutputFolderError, match=r"train.idx exists; pass --overwrite to replace it$"):
        claim_file(index, "inspect-rec", example=None)
