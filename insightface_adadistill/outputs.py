"""The one output contract of every command that writes: nothing replaced, nothing mixed, unasked.

Every writing command calls `claim_output(folder, command)` or `claim_file(path, command)` before
it writes anything, and writes through `atomic_write` or `staged` (whole or not at all). A claimed
folder is of one kind (a run, a dataset, a teacher cache, evaluation results or a demo), recorded in
`.adadistill-output.json` or, where an older release, arcface_torch or im2rec made it, shown by its
files (`folder_kind`); it is held by one job at a time (`flock` on `.adadistill.lock`; under
torchrun only rank 0 claims; where the filesystem refuses locks, e.g. some NFS or FUSE mounts, the
claim succeeds with a warning). A refused claim, or one that ends with nothing written, leaves the
folder exactly as it was. The rules and their tests: docs/safety.md#outputs.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, List, Optional, Tuple

from insightface_adadistill.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".adadistill.lock"
KIND_FILE = ".adadistill-output.json"
CLAIM_FILES = (LOCK_FILE, KIND_FILE)  # what a claim adds to a folder; not the job's output
_NO_LOCK_SUPPORT = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_REASONS = {errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOSPC: "no space left on device"}

# the kind of folder each writing command makes
KIND_OF_COMMAND = {"train": "run", "host-train": "run", "convert-host-checkpoint": "run",
                   "make-synthetic": "dataset", "make-rec": "dataset", "cache-teacher": "cache",
                   "eval-ijb": "evaluation", "demo": "demo"}
KIND_NAMES = {"run": "a training run", "dataset": "a dataset", "cache": "a teacher cache",
              "evaluation": "evaluation results", "demo": "a demo"}
# what a folder without a kind record holds, by the first of these names found in it
_SIGNS = (("demo", (".adadistill-demo",)),  # the demo's marker before the kind record
          ("run", ("model.pt", "checkpoints", "checkpoint_gpu_0.pt", "training.log")),
          ("cache", ("embeddings.npy", "build.json")),
          ("dataset", ("train.rec", "train.idx", "train/train.rec")),
          ("evaluation", ("ijbc.json", "ijbb.json")))
# the flag that lets a command write over what is there
_CONFIG_COMMANDS = ("train",)
_NO_OVERWRITE = ("cache-teacher", "convert-host-checkpoint", "host-train")


class OutputFolderError(UserError, ValueError):
    """An output cannot be used: not a folder/file, not writable, in use, another kind, or it exists."""


def overwrite_flag(command: str) -> Optional[str]:
    """How a user says "write there anyway" to `command`: a config key for train-like commands, a
    flag for the others; None where nothing may be replaced (a teacher cache or a converted host
    run is only ever added to)."""
    if command in _NO_OVERWRITE:
        return None
    return "--set overwrite=True" if command in _CONFIG_COMMANDS else "--overwrite"


def _or_overwrite(command: str, what: str) -> str:
    flag = overwrite_flag(command)
    return f", or pass {flag} to {what}" if flag else ""


def folder_kind(folder: str | os.PathLike) -> Optional[str]:
    """The kind of output `folder` holds: its recorded kind, else the kind its files show, else None."""
    return _kind_and_evidence(Path(folder))[0]


def _kind_and_evidence(folder: Path) -> Tuple[Optional[str], str]:
    """(kind, what shows it) for the refusal message."""
    kind_file = folder / KIND_FILE
    if kind_file.is_file():
        try:
            record = json.loads(kind_file.read_text())
            return str(record["kind"]), f"made by `adadistill {record.get('command', '?')}`, see {kind_file}"
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise OutputFolderError(f"{kind_file} is unreadable ({exc}); it records which kind of output "
                                    f"{folder} holds: delete it if you are sure the folder is free") from exc
    found = next(((kind, name) for kind, names in _SIGNS for name in names if (folder / name).exists()), None)
    return (found[0], f"it has {found[1]}") if found else (None, "")


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, command: str, *, overwrite: bool = False, resume: bool = False,
                 replaces: Iterable[str] = (), check: Optional[Callable[[Path], Any]] = None) -> Iterator[Path]:
    """Hold the folder `path` for `command` (e.g. "train", "make-synthetic") until the context exits.

    The folder is created (with parents) when missing; its kind is `KIND_OF_COMMAND[command]`.
    `replaces` names (relative to the folder) the files the command writes; existing ones, like a
    folder of another kind, need `overwrite`. `resume` (the job continues what is there) is recorded
    in the lock file for a reader. `check` is called with the folder once locked, before the claim is
    recorded; an exception it raises refuses the claim and undoes everything the claim made.
    Raises `OutputFolderError` where `path` is a file, cannot be created or written, holds another
    kind of output or files the command would replace, or is locked by a running job.
    """
    folder, kind = Path(path), KIND_OF_COMMAND[command]
    made: List[Path] = []
    if folder.exists():
        _check_existing(folder, command, kind, overwrite, replaces)
    else:
        made = _make_folder(folder)
    with contextlib.ExitStack() as held:
        lock: Optional[_Lock] = None
        kind_was = _read_bytes(folder / KIND_FILE)
        try:
            _check_writable(folder)
            lock = held.enter_context(_exclusive_lock(folder, command, resume=resume, force=overwrite))
            if check is not None:
                check(folder)
            _record_kind(folder, kind, command)
        except BaseException:
            _undo(folder, lock, kind_was, made)
            raise
        try:
            yield folder
        finally:
            if _holds_only_claim_files(folder):  # it ended before writing anything
                _undo(folder, lock, kind_was, made)


def _holds_only_claim_files(folder: Path) -> bool:
    try:
        return {p.name for p in folder.iterdir()} <= set(CLAIM_FILES)
    except OSError:  # the job removed or replaced the folder: nothing of the claim to undo
        return False


def _undo(folder: Path, lock: Optional["_Lock"], kind_was: Optional[bytes], made: List[Path]) -> None:
    """Leave the folder as the claim found it: kind record and lock file as they were, new folders gone."""
    if kind_was is None:
        (folder / KIND_FILE).unlink(missing_ok=True)
    elif _read_bytes(folder / KIND_FILE) != kind_was:
        atomic_write(folder / KIND_FILE, lambda fh: fh.write(kind_was))
    if lock is not None:
        lock.undo()
    for created in made:  # innermost first; empty again once the claim's files are gone
        with contextlib.suppress(OSError):
            created.rmdir()


def claim_file(path: str | os.PathLike, command: str, *, overwrite: bool = False,
               example: Optional[str] = "out") -> Path:
    """Check that `command` may write the single file `path`; nothing is made. Write it atomically.

    `example` is a file name to suggest inside a folder given as `path`; None where the name is
    fixed (a `.rec`'s `.idx`), so the only way past an existing file is the overwrite flag. Raises
    `OutputFolderError` where `path` is a folder, or exists and `overwrite` is not set.
    """
    path = Path(path)
    if path.is_dir():
        suggestion = f": give a file path, e.g. {path / example}" if example else ""
        raise OutputFolderError(f"{path} is a folder; `adadistill {command}` writes a file{suggestion}")
    if path.exists() and not overwrite:
        if example is None:
            raise OutputFolderError(f"{path} exists; pass {overwrite_flag(command)} to replace it")
        raise OutputFolderError(f"{path} exists; choose another file name{_or_overwrite(command, 'replace it')}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputFolderError(f"cannot write {path}: {parent} is a file, not a folder")
    return path


@contextlib.contextmanager
def staged(folder: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder inside `folder` to write several outputs into; on success each entry is
    moved into `folder` (one rename each, replacing what had that name), on failure all of it is
    removed, so a reader never sees a half-written file and a failed command leaves no part."""
    folder = Path(folder)
    stage = Path(tempfile.mkdtemp(prefix=".adadistill-staging.", dir=folder))
    try:
        yield stage
        for entry in sorted(stage.iterdir()):
            target = folder / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_existing(folder: Path, command: str, kind: str, overwrite: bool, replaces: Iterable[str]) -> None:
    if not folder.is_dir():
        raise OutputFolderError(f"output {folder} is a file, not a folder; choose a folder path "
                                f"(e.g. {folder.with_suffix('')}_out) or move the file away")
    found, evidence = _kind_and_evidence(folder)
    if found is not None and found != kind and not overwrite:
        raise OutputFolderError(f"output {folder} holds {KIND_NAMES.get(found, found)} ({evidence}), not "
                                f"{KIND_NAMES[kind]}; choose another folder{_or_overwrite(command, 'write into it anyway')}")
    existing = [str(folder / name) for name in replaces if (folder / name).exists()]
    if existing and not overwrite:
        it = "them" if len(existing) > 1 else "it"
        raise OutputFolderError(f"output {folder} already holds {', '.join(existing)}; choose another "
                                f"folder{_or_overwrite(command, 'replace ' + it)}")


def _make_folder(folder: Path) -> List[Path]:
    """Create `folder` and missing parents; returns the ones created, innermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"output {folder} cannot be created ({_reason(exc)}); choose a folder on a "
                                "writable disk, or fix its permissions") from exc
    return missing


def _check_writable(folder: Path) -> None:
    probe = folder / f".adadistill-write-test.{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(f"output {folder} cannot be written ({_reason(exc)}); choose a folder on "
                                "a writable disk, or fix its permissions") from exc


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{exc.filename} is a file, not a folder"
    return _REASONS.get(exc.errno, exc.strerror or str(exc))


def _read_bytes(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _record_kind(folder: Path, kind: str, command: str) -> None:
    record = (json.dumps({"kind": kind, "command": command}) + "\n").encode()
    if not (folder / KIND_FILE).is_file() or folder_kind(folder) != kind:
        atomic_write(folder / KIND_FILE, lambda fh: fh.write(record))


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process umask (read by setting it, so once: a thread creating a file meanwhile could
    otherwise see the temporary value)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write` on a temporary file beside `path`, fsync, then rename it over `path`.

    A crash mid-write leaves the previous file intact: readers never see a partial file. The file
    gets the mode `open()` would give it (0666 less the umask), not mkstemp's private 0600, so a
    `model.pt` is as readable by a team as a file `torch.save` writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class _Lock:
    """A held lock; `undo()` leaves the lock file as it was before this claim (removed if new)."""

    def __init__(self, fd: int, path: Path, previous: Optional[bytes]) -> None:
        self.fd, self.path, self.previous = fd, path, previous

    def undo(self) -> None:
        if self.previous is None:  # still held: a claimer that opened this file sees it gone and retries
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, self.previous, 0)


@contextlib.contextmanager
def _exclusive_lock(folder: Path, command: str, *, resume: bool, force: bool) -> Iterator[_Lock]:
    import fcntl  # POSIX only; imported here so that importing the package works everywhere

    lock_path = folder / LOCK_FILE
    while True:
        previous = _read_bytes(lock_path)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_holder(lock_path)
            raise OutputFolderError(f"output {folder} is in use by another job ({holder}); wait for it "
                                    f"to finish, stop it, or choose another output folder") from None
        except OSError as exc:
            if exc.errno not in _NO_LOCK_SUPPORT:
                os.close(fd)
                raise
            logger.warning("the filesystem of %s does not support file locks (%s): a second job "
                           "started on this folder will not be detected", folder, exc.strerror)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        os.close(fd)  # a refused claim removed the file we locked: lock the current one
    try:
        holder = {"job": command, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resume": resume, "force": force}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield _Lock(fd, lock_path, previous)
    finally:
        os.close(fd)  # releases the flock; the file stays (only a refused claim that made it removes it)


def _read_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text())
        return f"`adadistill {holder['job']}`, pid {holder['pid']} on {holder['host']}, since {holder['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return f"see {lock_path}"
