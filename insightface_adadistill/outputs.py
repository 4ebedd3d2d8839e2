"""One guard for every folder a command writes into: claim it for one job, exclusively.

`claim_output(path, job)` is what training, ONNX export, synthetic-data and cache building call
before they write anything. It

- creates the folder, turning "is a file" (Errno 17/20), read-only (Errno 30) and permission
  errors into one `OutputFolderError` that names the folder and the fix;
- refuses a folder that holds another kind of output (a dataset is no training folder): each
  claimed folder records its job in `.adadistill-output.json`;
- takes an exclusive `fcntl.flock` on `.adadistill.lock` for as long as the context is open, so a
  second job started on the same folder is refused instead of mixing files with the first.
  Under torchrun only the launching rank (rank 0) claims; the lock works between processes of
  one machine and on network filesystems that support flock. Where the filesystem refuses locks
  (ENOLCK/EOPNOTSUPP, e.g. some NFS or FUSE mounts) the claim still succeeds and logs a warning:
  two runs on one such folder are then not detected.

Whether existing files of the *same* job may be replaced is the job's decision (training resumes
or refuses, `make-synthetic` wants `--force`): pass `resume`/`force` for the record, and check the
job's own files after claiming. See docs/safety.md.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from insightface_adadistill.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".adadistill.lock"
KIND_FILE = ".adadistill-output.json"
_NO_LOCK_SUPPORT = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputFolderError(UserError, ValueError):
    """An output folder cannot be used: not a folder, not writable, in use, or another job's."""


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, job: str, *, resume: bool = False,
                 force: bool = False) -> Iterator[Path]:
    """Hold `path` for `job` (e.g. "train", "export-onnx") until the context exits.

    Args:
        path: the output folder; created (with parents) when missing.
        job: the command writing it; a folder claimed by another job is refused.
        resume: the job continues what is there (recorded in the lock file for a reader).
        force: the job may replace what is there (recorded likewise).

    Raises:
        OutputFolderError: `path` is a file, cannot be created or written, holds another job's
            output, or is locked by a running job (the message names it and its pid).
    """
    folder = Path(path)
    _make_folder(folder)
    _check_kind(folder, job)
    with _exclusive_lock(folder, job, resume=resume, force=force):
        _record_kind(folder, job)
        yield folder


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"output {folder} is a file, not a folder; choose a folder path "
                                f"(e.g. {folder.with_suffix('')}_run) or move the file away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".adadistill-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(f"output {folder} cannot be written ({_reason(exc)}); choose a folder on "
                                "a writable disk, or fix its permissions") from exc


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only filesystem"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{exc.filename} is a file, not a folder"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)


def _check_kind(folder: Path, job: str) -> None:
    kind_file = folder / KIND_FILE
    if not kind_file.is_file():
        return
    try:
        recorded = json.loads(kind_file.read_text()).get("job")
    except (ValueError, AttributeError, OSError) as exc:
        raise OutputFolderError(f"{kind_file} is unreadable ({exc}); it records which command owns "
                                f"{folder}: delete it if you are sure the folder is free") from exc
    if recorded != job:
        raise OutputFolderError(f"output {folder} holds the output of `adadistill {recorded}` (see "
                                f"{kind_file}), not of `adadistill {job}`; choose another folder")


def _record_kind(folder: Path, job: str) -> None:
    kind_file = folder / KIND_FILE
    if not kind_file.is_file():
        tmp = folder / f".{KIND_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"job": job}) + "\n")
        os.replace(tmp, kind_file)


@contextlib.contextmanager
def _exclusive_lock(folder: Path, job: str, *, resume: bool, force: bool) -> Iterator[None]:
    import fcntl  # POSIX only; imported here so that importing the package works everywhere

    lock_path = folder / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock_path)
            raise OutputFolderError(f"output {folder} is in use by another job ({holder}); wait for it "
                                    f"to finish, stop it, or choose another output folder") from None
        except OSError as exc:
            if exc.errno not in _NO_LOCK_SUPPORT:
                raise
            logger.warning("the filesystem of %s does not support file locks (%s): a second job "
                           "started on this folder will not be detected", folder, exc.strerror)
        holder = {"job": job, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resume": resume, "force": force}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays so that no unlink can race a new claim


def _read_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text())
        return f"`adadistill {holder['job']}`, pid {holder['pid']} on {holder['host']}, since {holder['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return f"see {lock_path}"
