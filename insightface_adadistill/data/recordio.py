"""MXNet RecordIO (`train.rec` + `train.idx`) read and written without MXNet.

Physical layout (dmlc-core, little-endian), repeated per chunk:

    magic  uint32  0xCED7230A                (bytes on disk 0A 23 D7 CE)
    lrec   uint32  cflag << 29 | length       (cflag 0 whole, 1 first, 2 middle, 3 last part)
    data   length bytes
    pad    zero bytes up to the next multiple of 4

A record is split into chunks only where its bytes hold the magic word at a 4-byte aligned offset;
the writer drops those 4 bytes and the reader puts them back between chunks. The `.idx` text file
maps `key<TAB>offset` (offset of the record's first magic word), in write order.

The logical payload of `mx.recordio.pack` is a 24-byte `IRHeader` (struct `'IfQQ'`: flag, float32
label, id, id2); when flag > 0 the float32 label array of length `flag` follows, then the image.
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple, Sequence, TextIO

import numpy as np

from insightface_adadistill.errors import DataError, InputNotFoundError
from insightface_adadistill.outputs import atomic_write

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK_HEAD = struct.Struct("<II")  # magic, lrec
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes, same layout as native 'IfQQ'
_LENGTH_MASK = (1 << 29) - 1  # also the largest record a chunk can hold
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3  # cflag values of a physical chunk
# Bytes read on the first try by `read_header`: chunk head + IRHeader + up to 8 float labels.
_HEADER_PEEK = _CHUNK_HEAD.size + _IR_HEADER.size + 32


class RecordIOError(DataError):
    """A `.rec`/`.idx` pair is malformed; the message names the file, the key and the byte offset."""


class IRHeader(NamedTuple):
    """`mx.recordio.IRHeader`: `label` is a float (flag 0) or a float32 array of length `flag`."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


class Chunk(NamedTuple):
    """One physical chunk: byte offset of its magic word, cflag and data length."""

    offset: int
    cflag: int
    length: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Serialise a header and payload like `mx.recordio.pack`.

    A numeric label is stored in the header with flag 0 (the given flag is ignored, as in MXNet); a
    list/array label sets flag = number of labels and appends them as float32 after the header.
    """
    if isinstance(header.label, (int, float, np.integer, np.floating)):
        return _IR_HEADER.pack(0, float(header.label), header.id, header.id2) + bytes(payload)
    labels = np.asarray(header.label, dtype="<f4").reshape(-1)
    return _IR_HEADER.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + bytes(payload)


def unpack(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record into its `IRHeader` and payload (the image bytes), like `mx.recordio.unpack`;
    `where` names the record in the error raised for a record too short for its own header."""
    header = unpack_header(record, where)
    return header, bytes(record[_IR_HEADER.size + 4 * header.flag:])


def unpack_header(record: bytes, where: str = "record") -> IRHeader:
    """Parse only the `IRHeader` (and its float32 labels) at the start of a record."""
    if len(record) < _IR_HEADER.size:
        raise RecordIOError(f"{where}: {len(record)} bytes is shorter than the 24-byte IRHeader; "
                            "the record was not written by mx.recordio.pack - rebuild the .rec")
    flag, label, rec_id, rec_id2 = _IR_HEADER.unpack_from(record)
    if flag == 0:
        return IRHeader(0, label, rec_id, rec_id2)
    end = _IR_HEADER.size + 4 * flag
    if len(record) < end:
        raise RecordIOError(f"{where}: header says {flag} float32 labels but the record has only "
                            f"{len(record)} bytes; the record is corrupt - rebuild the .rec")
    labels = np.frombuffer(record, dtype="<f4", count=flag, offset=_IR_HEADER.size).astype(np.float32)
    return IRHeader(flag, labels, rec_id, rec_id2)


def split_record(record: bytes) -> list[bytes]:
    """The chunk bodies of a record: cut at every 4-byte aligned magic word (which is dropped), as
    dmlc-core does; one body means the record is written whole (cflag 0)."""
    bodies, start, pos = [], 0, record.find(MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0:
            bodies.append(record[start:pos])
            start = pos + 4
        pos = record.find(MAGIC_BYTES, pos + 1)  # the magic word cannot overlap itself
    bodies.append(record[start:])
    return bodies


def encode_chunks(record: bytes) -> bytes:
    """The exact bytes the writer puts on disk for one record (chunks plus final zero padding)."""
    if len(record) > _LENGTH_MASK:
        raise RecordIOError(f"a record of {len(record)} bytes exceeds the RecordIO limit of 2**29 - 1 "
                            "bytes; store a smaller (re-encoded) image")
    bodies = split_record(record)
    cflags = [WHOLE] if len(bodies) == 1 else [FIRST] + [MIDDLE] * (len(bodies) - 2) + [LAST]
    out = b"".join(_CHUNK_HEAD.pack(MAGIC, cflag << 29 | len(body)) + body for cflag, body in zip(cflags, bodies))
    return out + b"\0" * (-len(out) % 4)  # only the last chunk can be unaligned


def read_index(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a `.idx` file into (keys, offsets) int64 arrays in file order."""
    if os.path.getsize(idx_path) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rebuild = f"rebuild it with `adadistill inspect-rec {idx_path.parent} --rebuild-index`"
    try:
        table = np.loadtxt(idx_path, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise RecordIOError(f"{idx_path}: not a RecordIO index of 'key<TAB>offset' lines ({exc}); {rebuild}") from exc
    if table.shape[1] != 2:
        raise RecordIOError(f"{idx_path}: expected 2 columns (key, offset), found {table.shape[1]}; {rebuild}")
    return table[:, 0].copy(), table[:, 1].copy()


class RecordIOReader:
    """Random access to the records of a `.rec` file by key, through its `.idx`.

    `keys` is an int64 array in `.idx` order (like `MXIndexedRecordIO.keys`, which keeps file order;
    im2rec writes shuffled keys). Reads use `os.pread` on a descriptor opened on first use in each
    process, and the reader pickles as paths only, so an instance made in the main process is safe to
    use in forked or spawned DataLoader workers.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise InputNotFoundError(f"RecordIO file {self.rec_path} does not exist")
        if not self.idx_path.is_file():
            raise InputNotFoundError(
                f"RecordIO index {self.idx_path} does not exist (needed for random access into "
                f"{self.rec_path}); rebuild it with `adadistill inspect-rec {self.rec_path.parent} "
                "--rebuild-index` or RecordIOReader.rebuild_index(rec_path, idx_path)")
        keys, self._offsets = read_index(self.idx_path)
        self.keys = keys
        self.file_size = os.path.getsize(self.rec_path)
        self._fd: int | None = None
        self._pid: int | None = None
        # Key -> row in the index: arithmetic when keys are consecutive, else a sorted search.
        self._first_key = int(keys[0]) if len(keys) else 0
        self._consecutive = bool(len(keys) == 0 or np.array_equal(keys, np.arange(len(keys)) + keys[0]))
        if self._consecutive:
            return
        self._order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._order]
        duplicate = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
        if duplicate.size:
            raise RecordIOError(f"{self.idx_path}: key {int(self._sorted_keys[duplicate[0]])} appears more "
                                "than once; rebuild the index with `adadistill inspect-rec "
                                f"{self.rec_path.parent} --rebuild-index`")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (int, np.integer)) and self._row(int(key)) is not None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, None  # each process opens its own descriptor
        return state

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's descriptor (reopened automatically on the next read)."""
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None

    def _row(self, key: int) -> int | None:
        # Consecutive keys are the common case (InsightFace, RecBuilder): no search per read.
        row = key - self._first_key if self._consecutive else int(self._rows(np.asarray([key]))[0])
        return row if 0 <= row < len(self.keys) else None

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """Vectorised `_row`: index rows of `keys`, -1 where a key is absent."""
        keys = np.asarray(keys, dtype=np.int64)
        if self._consecutive:
            rows = keys - self._first_key
            return np.where((rows >= 0) & (rows < len(self.keys)), rows, -1)
        # Not consecutive implies a non-empty index.
        pos = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self.keys) - 1)
        return np.where(self._sorted_keys[pos] == keys, self._order[pos], -1)

    def missing_keys(self, keys: np.ndarray) -> np.ndarray:
        """The entries of `keys` that the index does not hold."""
        keys = np.asarray(keys, dtype=np.int64)
        return keys[self._rows(keys) < 0]

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Byte offsets of many keys at once (int64); every key must be present."""
        rows = self._rows(keys)
        if (rows < 0).any():
            raise KeyError(f"keys {self.missing_keys(keys)[:5].tolist()} are not in {self.idx_path}")
        return self._offsets[rows]

    def offset(self, key: int) -> int:
        """Byte offset of the record `key` in the `.rec` file."""
        row = self._row(key)
        if row is None:
            raise KeyError(f"key {key} is not in {self.idx_path} ({len(self.keys)} records)")
        return int(self._offsets[row])

    def _descriptor(self) -> int:
        if self._pid != os.getpid():  # first use, or we are a forked child: never share a descriptor
            self._fd, self._pid = os.open(self.rec_path, os.O_RDONLY), os.getpid()
        return self._fd

    def _pread(self, size: int, offset: int, key: int) -> bytes:
        data = os.pread(self._descriptor(), size, offset)
        if len(data) < size:
            raise RecordIOError(
                f"{self.rec_path}: record key {key} is truncated at byte offset {offset}: needed {size} "
                f"bytes, the file ends at {self.file_size}; the .rec was cut short (copy it again) or the "
                "index does not belong to it (rebuild with `adadistill inspect-rec --rebuild-index`)")
        return data

    def _chunk_head(self, head: bytes, offset: int, key: int) -> tuple[int, int]:
        magic, lrec = _CHUNK_HEAD.unpack_from(head)
        if magic != MAGIC:
            raise RecordIOError(
                f"{self.rec_path}: bad magic 0x{magic:08X} at byte offset {offset} (record key {key}), "
                f"expected 0x{MAGIC:08X}; the index does not match the .rec or the file is corrupt - "
                f"rebuild the index with `adadistill inspect-rec {self.rec_path.parent} --rebuild-index`")
        return lrec >> 29, lrec & _LENGTH_MASK

    def read(self, key: int) -> bytes:
        """The record stored under `key` (chunks re-joined with the magic word)."""
        offset = self.offset(key)
        parts, expected = [], (WHOLE, FIRST)
        while True:
            cflag, length = self._chunk_head(self._pread(8, offset, key), offset, key)
            if cflag not in expected:
                raise RecordIOError(f"{self.rec_path}: chunk at byte offset {offset} (record key {key}) "
                                    f"has cflag {cflag}, expected one of {expected}; the file is corrupt")
            parts.append(self._pread(length, offset + 8, key) if length else b"")
            if cflag in (WHOLE, LAST):
                return MAGIC_BYTES.join(parts)
            offset += 8 + length  # middle/first chunks end 4-byte aligned: no padding
            expected = (MIDDLE, LAST)

    def read_header(self, key: int) -> IRHeader:
        """Only the `IRHeader` of record `key`, from one small read (fast label scans)."""
        offset = self.offset(key)
        peek = os.pread(self._descriptor(), _HEADER_PEEK, offset)
        if len(peek) < 8:
            self._pread(8, offset, key)  # raises the truncation error
        cflag, length = self._chunk_head(peek, offset, key)
        body = peek[8:8 + length]
        if (cflag != WHOLE or len(body) < _IR_HEADER.size
                or len(body) < _IR_HEADER.size + 4 * _IR_HEADER.unpack_from(body)[0]):
            body = self.read(key)  # split, short or long-labelled record: take the full path
        return unpack_header(body, f"{self.rec_path} key {key}")

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """(key, record) pairs in index order."""
        for key in self.keys:
            yield int(key), self.read(int(key))

    @staticmethod
    def rebuild_index(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> int:
        """Scan a `.rec` front to back and write its `.idx`; returns the number of records.

        Each key is the record's `IRHeader.id`, which im2rec, RecBuilder and the InsightFace builders
        all set to the key; if the ids are not unique the keys become 0..N-1 in file order (a warning).
        """
        rec_path = Path(rec_path)
        idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
        offsets, ids = [], []
        for offset, record in scan_records(rec_path):
            offsets.append(offset)
            ids.append(unpack_header(record, f"{rec_path} record at byte offset {offset}").id)
        if len(set(ids)) != len(ids):
            warnings.warn(f"{rec_path}: IRHeader ids are not unique, so the rebuilt index numbers the "
                          "records 0..N-1 in file order", stacklevel=2)
            ids = list(range(len(offsets)))
        lines = "".join(f"{key}\t{offset}\n" for key, offset in zip(ids, offsets))
        atomic_write(idx_path, lambda fh: fh.write(lines.encode()))
        return len(offsets)


def scan_chunks(rec_path: str | os.PathLike) -> Iterator[Chunk]:
    """Every physical chunk of a `.rec` file, front to back (no index needed)."""
    rec_path = Path(rec_path)
    size = os.path.getsize(rec_path)
    with open(rec_path, "rb") as rec_file:
        offset = 0
        while offset < size:
            head = rec_file.read(8)
            if len(head) < 8:
                raise RecordIOError(f"{rec_path}: truncated chunk header at byte offset {offset} "
                                    f"(file size {size}); the file was cut short - copy it again")
            magic, lrec = _CHUNK_HEAD.unpack(head)
            if magic != MAGIC:
                raise RecordIOError(f"{rec_path}: bad magic 0x{magic:08X} at byte offset {offset}, "
                                    f"expected 0x{MAGIC:08X}; this is not an MXNet RecordIO file or it "
                                    "is corrupt at that offset")
            length = lrec & _LENGTH_MASK
            padded = length + (-length % 4)
            if offset + 8 + length > size:
                raise RecordIOError(f"{rec_path}: truncated chunk at byte offset {offset}: {length} "
                                    f"bytes announced, file ends at {size}; the file was cut short")
            rec_file.seek(padded, os.SEEK_CUR)
            yield Chunk(offset, lrec >> 29, length)
            offset += 8 + padded


def scan_records(rec_path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(offset, record) for every logical record of a `.rec`, front to back (no index needed)."""
    rec_path = Path(rec_path)
    with open(rec_path, "rb") as rec_file:
        start, parts = None, []
        for chunk in scan_chunks(rec_path):
            if (chunk.cflag in (MIDDLE, LAST)) != (start is not None):
                raise RecordIOError(f"{rec_path}: chunk at byte offset {chunk.offset} has cflag "
                                    f"{chunk.cflag} out of sequence; the file is corrupt there")
            rec_file.seek(chunk.offset + 8)
            parts.append(rec_file.read(chunk.length))
            start = chunk.offset if start is None else start
            if chunk.cflag in (WHOLE, LAST):
                yield start, MAGIC_BYTES.join(parts)
                start, parts = None, []
        if start is not None:
            raise RecordIOError(f"{rec_path}: the record starting at byte offset {start} has no last "
                                "chunk; the file was cut short")


class RecordIOWriter:
    """Writes records and their `.idx` like `mx.recordio.MXIndexedRecordIO(..., 'w')`.

    Files are written under temporary names and renamed on `close()`, so a crash never leaves a
    half-written `train.rec` that looks complete. Use as a context manager; on an exception the
    temporary files are removed.
    """

    def __init__(self, rec_path: str | os.PathLike) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = self.rec_path.with_suffix(".idx")
        self._tmp_rec = self.rec_path.with_name(self.rec_path.name + ".partial")
        self._tmp_idx = self.idx_path.with_name(self.idx_path.name + ".partial")
        self._rec: BinaryIO | None = open(self._tmp_rec, "wb")
        self._idx: TextIO = open(self._tmp_idx, "w")
        self._sizes: dict[int, tuple[int, int]] = {}  # key -> (offset, bytes on disk)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: int, record: bytes) -> None:
        """Append `record` (e.g. from `pack`) under the integer `key`."""
        if self._rec is None:
            raise RecordIOError(f"{self.rec_path}: write() after close()")
        key = int(key)
        if key in self._sizes:
            raise RecordIOError(f"{self.rec_path}: key {key} was already written; keys must be unique")
        encoded = encode_chunks(record)
        offset = self._rec.tell()
        self._rec.write(encoded)
        self._idx.write(f"{key}\t{offset}\n")
        self._sizes[key] = (offset, len(encoded))

    def overwrite(self, key: int, record: bytes) -> None:
        """Replace an already written record by one of the same on-disk size (e.g. a header whose
        counts are known only at the end)."""
        if self._rec is None or key not in self._sizes:
            raise RecordIOError(f"{self.rec_path}: cannot overwrite key {key}: not written or closed")
        offset, size = self._sizes[key]
        encoded = encode_chunks(record)
        if len(encoded) != size:
            raise RecordIOError(f"{self.rec_path}: key {key} takes {size} bytes on disk, the new "
                                f"record {len(encoded)}; overwrite() needs the same size")
        end = self._rec.tell()
        self._rec.seek(offset)
        self._rec.write(encoded)
        self._rec.seek(end)

    def close(self) -> None:
        """Flush and move the files to their final names."""
        if self._rec is None:
            return
        self._rec.close()
        self._idx.close()
        self._rec = None
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Close and delete the temporary files; nothing appears under the final names."""
        if self._rec is None:
            return
        self._rec.close()
        self._idx.close()
        self._rec = None
        for path in (self._tmp_rec, self._tmp_idx):
            path.unlink(missing_ok=True)


def write_records(rec_path: str | os.PathLike, items: Sequence[tuple[int, bytes]]) -> None:
    """Write (key, record) pairs in order to `rec_path` and its `.idx` (small files, tests)."""
    with RecordIOWriter(rec_path) as writer:
        for key, record in items:
            writer.write(key, record)
