"""The cache's files: the (N, 2, E) `.npy` array, its row reader and writer, and build progress.

The array is a standard `.npy` (`np.load(path, mmap_mode="r")` maps it), created sparse, so a
partial build takes only the disk its rows need. Rows are written with `pwrite` + `fsync`, not
through a mapping: a full disk is then an `OSError(ENOSPC)` we can report, where a mapped write
would kill the process with SIGBUS. Training reads rows with `preadv` into fresh buffers, so the
page cache (shared by every rank and worker on the node) holds the cache and a process's resident
memory does not grow with N. bf16 is stored as raw int16 bits (numpy has no bfloat16).
"""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from insightface_adadistill.cache.manifest import CacheError

ARRAY = "embeddings.npy"
PROGRESS = "progress"  # one empty `chunk_<k>.done` per committed chunk
BUILD = "build.json"  # the manifest of a build in progress (rows_written still 0)
# storage name -> (numpy dtype on disk, torch dtype of the rows)
DTYPES: Dict[str, Tuple[np.dtype, torch.dtype]] = {
    "fp32": (np.dtype("<f4"), torch.float32),
    "fp16": (np.dtype("<f2"), torch.float16),
    "bf16": (np.dtype("<i2"), torch.bfloat16),
}


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise CacheError(f"cache dtype {dtype!r} is not supported; use one of {list(DTYPES)}")
    return dtype


def array_bytes(shape: Iterable[int], dtype: str) -> int:
    """Bytes of the rows (N x 2 x E x itemsize), the header excluded."""
    return int(np.prod(list(shape))) * DTYPES[dtype][0].itemsize


def create_array(path: Path, shape: Tuple[int, int, int], dtype: str) -> None:
    """Write the `.npy` header and extend the file, sparse, to its full size."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(DTYPES[dtype][0]), "fortran_order": False,
                  "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(fh, header)
        fh.truncate(fh.tell() + array_bytes(shape, dtype))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_array_header(path: Path) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a `.npy`, read from its header only."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)
            return tuple(shape), dtype, fh.tell()
    except FileNotFoundError as exc:
        raise CacheError(f"{path} is missing; the cache is incomplete - rebuild it with "
                         "`adadistill cache-teacher`") from exc
    except ValueError as exc:
        raise CacheError(f"{path}: not a readable .npy array ({exc}); rebuild the cache with "
                         "`adadistill cache-teacher`") from exc


class RowFile:
    """Random access to the rows of the array; the descriptor is opened once per process, so an
    instance made in the main process works in DataLoader workers (forked or spawned)."""

    _fd: Optional[int] = None
    _pid: Optional[int] = None  # the process that opened `_fd`

    def __init__(self, path: Path, *, shape: Tuple[int, ...], dtype: str, offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, tuple(shape), dtype, offset
        self.numpy_dtype, self.torch_dtype = DTYPES[dtype]
        self.row_bytes = shape[1] * shape[2] * self.numpy_dtype.itemsize  # both orientations

    @classmethod
    def open(cls, path: Path, dtype: str) -> "RowFile":
        """The rows of the `.npy` at `path` (shape and data offset read from its header)."""
        shape, _, offset = read_array_header(path)
        return cls(path, shape=shape, dtype=dtype, offset=offset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        self.close()

    def _descriptor(self, flags: int = os.O_RDONLY) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, flags), os.getpid()
        return self._fd

    def read(self, index: int, flipped: bool) -> torch.Tensor:
        """(E,) teacher embedding of sample `index`, mirrored when `flipped`, in the storage dtype."""
        buffer = np.empty(self.shape[2], dtype=self.numpy_dtype)
        position = self.offset + index * self.row_bytes + int(flipped) * buffer.nbytes
        if os.preadv(self._descriptor(), [buffer], position) != buffer.nbytes:
            raise CacheError(f"{self.path}: row {index} is beyond the end of the file (truncated); "
                             "rebuild the cache with `adadistill cache-teacher`")
        return torch.from_numpy(buffer).view(self.torch_dtype)

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Write rows [start, start + len(rows)) from a (n, 2, E) CPU tensor and fsync them.

        Raises CacheError on ENOSPC: the chunks committed so far stay valid and the build resumes.
        """
        payload = rows.to(self.torch_dtype).contiguous().view(torch.uint8).numpy().tobytes()  # numpy has no bf16
        fd = self._descriptor(os.O_WRONLY)
        try:
            written = 0
            while written < len(payload):
                written += os.pwrite(fd, payload[written:], self.offset + start * self.row_bytes + written)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheError(f"{self.path}: the disk is full (writing rows {start}.."
                                 f"{start + len(rows) - 1}); free space and rerun the same command: "
                                 "the build resumes after the last committed chunk") from exc
            raise

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None


def chunk_marker(folder: Path, chunk: int) -> Path:
    return folder / PROGRESS / f"chunk_{chunk:06d}.done"


def chunk_count(build: Mapping[str, Any]) -> int:
    """How many chunks a build (its `build.json`) has: `shape[0]` rows, `chunk_rows` per chunk."""
    return math.ceil(build["shape"][0] / build["chunk_rows"])


def pending_chunks(folder: Path, build: Mapping[str, Any]) -> List[int]:
    """The chunks of `build` not committed yet (a marker exists only once its rows are fsynced)."""
    return [k for k in range(chunk_count(build)) if not chunk_marker(folder, k).exists()]


def commit_chunk(folder: Path, chunk: int) -> None:
    """Mark a chunk done; called only after its rows are fsynced."""
    marker = chunk_marker(folder, chunk)
    marker.parent.mkdir(parents=True, exist_ok=True)
    with open(marker, "wb") as fh:
        os.fsync(fh.fileno())
