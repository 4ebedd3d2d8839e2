"""Training datasets: InsightFace / im2rec / Glint RecordIO, image folders and a synthetic set.

Every dataset returns a `Sample` whose image is a float32 (3, 112, 112) RGB tensor normalised as
(x - 127.5) / 127.5 (arcface_torch's ToTensor + Normalize(0.5, 0.5)); with `uint8=True` (the trainer)
it is the uint8 pixels, 4x fewer bytes for the workers to hand over, which the loader normalises on
the device to the same bits. The only augmentation is a horizontal flip with p = 0.5, a pure function
of (seed, epoch, index), so a resumed run sees the same flips without saving any worker RNG state.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from insightface_adadistill.errors import DataError, InputNotFoundError
from insightface_adadistill.outputs import atomic_write
from .decode import decode_image
from .hashing import MASK64, splitmix64
from .recordio import IRHeader, RecordIOError, RecordIOReader, unpack

IMAGE_SIZE = 112
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_FLOAT32_EXACT_LIMIT = 2 ** 24  # float32 holds every integer up to here, not beyond
_log = logging.getLogger(__name__)


class ImageSizeError(DataError):
    """A stored image is not an aligned 112x112 face."""


class LabelError(DataError):
    """The identity labels of a dataset do not form 0..C-1, or do not match `num_classes`."""


class Sample(NamedTuple):
    """One training example; the DataLoader collates each field into a batch.

    image: (3, 112, 112) float32 in [-1, 1], or uint8 pixels from a `uint8=True` dataset; label:
    int64 scalar; index: position in the dataset; flipped: whether the horizontal flip was applied.
    """

    image: torch.Tensor
    label: torch.Tensor
    index: int
    flipped: bool


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether sample `index` is flipped in `epoch`: a SplitMix64 hash chain, p = 0.5, the same in every process."""
    state = splitmix64(seed & MASK64)
    state = splitmix64(state ^ (epoch & MASK64))
    state = splitmix64(state ^ (index & MASK64))
    return bool(state >> 63)


def to_tensor(rgb: np.ndarray, flip: bool) -> torch.Tensor:
    """(112, 112, 3) uint8 RGB -> (3, 112, 112) float32 (x - 127.5) / 127.5, optionally mirrored.

    One numpy ufunc writes the transposed, normalised result into a fresh (3, H, W) buffer; this
    was ~15x faster than torch's permute + float on strided uint8 in our benchmark.
    """
    source = rgb[:, ::-1] if flip else rgb  # (H, W, 3) view, mirrored along W
    image = np.empty((3,) + rgb.shape[:2], dtype=np.float32)
    np.subtract(source.transpose(2, 0, 1), np.float32(127.5), out=image)
    image /= np.float32(127.5)
    return torch.from_numpy(image)


def to_pixels(rgb: np.ndarray, flip: bool) -> torch.Tensor:
    """(112, 112, 3) uint8 RGB -> (3, 112, 112) uint8, optionally mirrored (one transposing copy)."""
    source = rgb[:, ::-1] if flip else rgb  # (H, W, 3) view, mirrored along W
    return torch.from_numpy(np.ascontiguousarray(source.transpose(2, 0, 1)))


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (x - 127.5) / 127.5 on the pixels' device, the bits of `to_tensor`.

    The divisor is a tensor on the device, not a Python number: CUDA turns division by a CPU
    scalar into a multiplication by its reciprocal, which can differ in the last bit.
    """
    divisor = torch.full((), 127.5, dtype=torch.float32, device=pixels.device)
    return pixels.float().sub_(127.5).div_(divisor)  # in place: one fresh buffer, not three


def check_image_size(rgb: np.ndarray, where: str) -> None:
    """Raise `ImageSizeError` unless `rgb` is (112, 112, 3); `where` names the file and key."""
    if rgb.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ImageSizeError(
            f"{where}: image is {rgb.shape[1]}x{rgb.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}; "
            "training takes aligned 112x112 faces with no resize - align the faces (e.g. insightface "
            "norm_crop) and rebuild the dataset with `adadistill make-rec`")


def check_labels(labels: np.ndarray, where: str, keys: Sequence[int]) -> int:
    """Check that `labels` (of the records `keys`) are the contiguous ids 0..C-1 and return C."""
    if labels.size == 0:
        raise LabelError(f"{where}: the dataset holds no images")
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        i = int(negative[0])
        raise LabelError(f"{where}: key {int(keys[i])} has label {int(labels[i])}; identity labels must be "
                         "0..C-1 - rebuild the dataset with `adadistill make-rec`")
    counts = np.bincount(labels)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise LabelError(
            f"{where}: found labels 0..{counts.size - 1} but ids {missing[:5].tolist()} "
            f"({missing.size} in all) have no images; PartialFC needs contiguous ids 0..C-1 - renumber "
            "the identities (e.g. rebuild with `adadistill make-rec`)")
    return int(counts.size)


class FaceDataset(Dataset):
    """Base class: decoding, the size check, the deterministic flip and normalisation.

    Subclasses implement `__len__`, `_load(index) -> (encoded or decoded image, label, where)` and
    set `num_classes_found`, `num_classes_source` and the `labels` array (int64, one per sample).
    Items may be indexed by `index` (uses `set_epoch`) or by `(epoch, index)`, which is what the
    sampler of `loader.py` yields so that persistent workers never need the epoch pushed to them.
    """

    num_classes_found: int
    num_classes_source: str
    description: str
    labels: np.ndarray  # (N,) int64 class id of every sample, in dataset order

    def __init__(self, seed: int, flip: bool) -> None:
        self.seed = int(seed)
        self.flip = bool(flip)
        self.uint8 = False  # build_dataset(uint8=True): items carry uint8 pixels; the loader normalises them
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose flips plain integer indexing uses."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> tuple[bytes | np.ndarray, int, str]:
        """(encoded bytes or RGB uint8 (H, W, 3), label, where) of sample `index`; `where` names
        the file and key in error messages."""
        raise NotImplementedError

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        index = int(index)
        flipped = self.flip and flip_decision(self.seed, int(epoch), index)
        rgb, label = self.load_rgb(index)
        image = to_pixels(rgb, flipped) if self.uint8 else to_tensor(rgb, flipped)
        return Sample(image, torch.tensor(label, dtype=torch.int64), index, flipped)

    def load_image(self, index: int, flipped: bool) -> tuple[torch.Tensor, int]:
        """(image (3, 112, 112) float32, label) of sample `index`, mirrored when `flipped`: the tensor
        training feeds the networks (also from `uint8=True` items), so the teacher cache embeds these."""
        rgb, label = self.load_rgb(index)
        return to_tensor(rgb, flipped), label

    def load_rgb(self, index: int) -> tuple[np.ndarray, int]:
        """(RGB uint8 (112, 112, 3), label) of sample `index`: the one place an item is decoded and checked."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label, where = self._load(index)
        rgb = decode_image(image, where) if isinstance(image, (bytes, bytearray, memoryview)) else image
        check_image_size(rgb, where)
        if not 0 <= label < self.num_classes_found:
            raise LabelError(f"{where}: label {label} is outside 0..{self.num_classes_found - 1} "
                             f"({self.num_classes_found} identities, from the {self.num_classes_source})"
                             "; the dataset is inconsistent - rebuild it with `adadistill make-rec`")
        return rgb, int(label)

    def check_num_image(self, num_image: int, mismatch: str = "stop") -> str | None:
        """Stop when the config's `num_image` disagrees with the data's image count, unless
        `mismatch` is 'warn' (arcface_torch's behaviour): then return the warning to log."""
        if num_image == len(self):
            return None
        effect = (f"the run would end after {num_image / len(self):.0%} of the data of each epoch"
                  if num_image < len(self) else
                  f"the epochs would run out at {len(self) / num_image:.0%} of the schedule, before the "
                  f"learning rate has decayed")
        problem = (f"config num_image = {num_image}, but {self.description} holds {len(self)} images; the "
                   f"warm-up, the learning-rate decay and the run's length are counted from num_image, so {effect}")
        if mismatch == "warn":
            return f"{problem} (num_image_mismatch = 'warn': training on, as arcface_torch does)"
        raise DataError(f"{problem}. Set num_image = {len(self)} in the recipe (or --set num_image={len(self)}), "
                        f"or num_image_mismatch = 'warn' to train on as arcface_torch does")

    def check_num_classes(self, num_classes: int | None) -> None:
        """Stop early when the config's `num_classes` disagrees with the data."""
        if num_classes is not None and num_classes != self.num_classes_found:
            raise LabelError(
                f"config num_classes = {num_classes}, but {self.description} has "
                f"{self.num_classes_found} identities (from the {self.num_classes_source}); set "
                f"num_classes = {self.num_classes_found} in the recipe (or --set "
                f"num_classes={self.num_classes_found})")


class SyntheticDataset(FaceDataset):
    """arcface_torch's speed-test dataset: one fixed random image, but labels cycle through
    `num_classes` ids so that a training run has every class to fit."""

    def __init__(self, num_classes: int, seed: int = 0, length: int = 1_000_000, flip: bool = True) -> None:
        super().__init__(seed, flip)
        if num_classes < 1:
            raise LabelError(f"synthetic data needs num_classes >= 1, got {num_classes}")
        self._image = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        self._length = int(length)
        self.num_classes_found = int(num_classes)
        self.num_classes_source = "synthetic setting"
        self.description = "synthetic data"

    def __len__(self) -> int:
        return self._length

    def check_num_image(self, num_image: int, mismatch: str = "stop") -> str | None:
        """Never a mismatch: synthetic data has no image count of its own (num_image sets the run's length)."""
        return None

    @property
    def labels(self) -> np.ndarray:
        return np.arange(self._length, dtype=np.int64) % self.num_classes_found

    def _load(self, index: int) -> tuple[np.ndarray, int, str]:
        return self._image, index % self.num_classes_found, "synthetic data"


class ImageFolderDataset(FaceDataset):
    """One sub-folder per identity; label = index of the folder in sorted name order (torchvision
    ImageFolder). Hidden folders are skipped; images are found recursively in sorted order."""

    def __init__(self, root: str | os.PathLike, seed: int = 0, flip: bool = True) -> None:
        super().__init__(seed, flip)
        self.root = Path(root)
        self.description = f"image folder {self.root}"
        self.classes, self.paths, self.labels = scan_image_folder(self.root)
        self.num_classes_found = len(self.classes)
        self.num_classes_source = "sub-folders"

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> tuple[bytes, int, str]:
        path = self.paths[index]
        return path.read_bytes(), int(self.labels[index]), str(path)


def scan_image_folder(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """(identity names, image paths, int64 labels) of a folder with one sub-folder per identity.

    Labels are the sorted sub-folder positions (torchvision ImageFolder); an identity folder
    without images is an error because it would leave a gap in the ids.
    """
    if not root.is_dir():
        raise InputNotFoundError(f"{root} is not a folder; expected <root>/<identity>/<image>.jpg")
    classes = sorted(entry.name for entry in os.scandir(root)
                     if entry.is_dir() and not entry.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = list_images(root / name)
        if not files:
            raise LabelError(f"{root / name}: identity folder {label} has no "
                             f"{'/'.join(IMAGE_EXTENSIONS)} images; remove the folder or add images")
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise LabelError(f"{root}: no identity sub-folders with images; expected "
                         "<root>/<identity>/<image>.jpg")
    return classes, paths, np.asarray(labels, dtype=np.int64)


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted path order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        found += [Path(dirpath) / name for name in sorted(filenames)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
    return found


class RecordLayout(NamedTuple):
    """How a `.rec` is organised.

    kind: "insightface" (header record 0, scalar labels), "glint" (header record 0, image records
    with several labels, label[0] is the class) or "header-less" (im2rec / RecBuilder: every key
    is an image, in `.idx` order). image_keys: the keys of the image records, in dataset order.
    header: the exact (A, B) of record 0, None without a header.
    """

    kind: str
    image_keys: Sequence[int]
    header: tuple[int, int] | None


def class_of(header: IRHeader) -> int:
    """The class id of an image record: the scalar label, or label[0] (Glint360K), truncated like
    arcface_torch's conversion to torch.long."""
    return int(header.label) if header.flag == 0 else int(header.label[0])


def _is_record(reader: RecordIOReader, key: int, image: bool) -> bool:
    """Whether `key` holds an image record, or (image=False) a header / identity record: at least 2
    labels and no image bytes."""
    if key not in reader:
        return False
    header, payload = unpack(reader.read(key), f"{reader.rec_path} key {key}")
    return len(payload) > 0 if image else header.flag >= 2 and not payload


def exact_boundary(approx: float, inside: Callable[[int], bool], what: str) -> int:
    """Recover an integer stored as float32 in a header.

    Values below 2**24 are exact. Above, float32 rounds to a multiple of 2, 4, ...; the true
    value k is then the key in [approx - ulp, approx + ulp] where `inside(k - 1)` holds and
    `inside(k)` does not, which costs a handful of record reads.
    """
    if approx < _FLOAT32_EXACT_LIMIT:
        return int(approx)
    ulp = int(np.spacing(np.float32(approx)))
    for key in range(int(approx) - ulp, int(approx) + ulp + 1):
        if inside(key - 1) and not inside(key):
            return key
    raise RecordIOError(f"cannot locate {what} near key {int(approx)} (float32 header value); the header "
                        "record 0 does not match the records - rebuild the dataset")


def detect_layout(reader: RecordIOReader) -> RecordLayout:
    """Classify a `.rec` as insightface / glint / header-less and list its image keys.

    Record 0 is a header when it has >= 2 labels and no image bytes (arcface_torch only checks
    flag > 0; we also require the empty payload so a header-less Glint-style file whose key 0 is an
    image is not misread). Its labels [A, B] are float32, so above 2**24 they are recovered from the
    records themselves (see `exact_boundary`).
    """
    if not _is_record(reader, 0, image=False):
        return RecordLayout("header-less", reader.keys, None)
    approx_a, approx_b = (float(v) for v in reader.read_header(0).label[:2])
    first_identity = exact_boundary(approx_a, lambda k: k == 0 or _is_record(reader, k, image=True),
                                    "the first identity record")
    end = first_identity if approx_b <= approx_a else exact_boundary(
        approx_b, lambda k: k < first_identity or _is_record(reader, k, image=False),
        "the end of the identity records")
    image_keys = range(1, first_identity)
    missing = reader.missing_keys(np.asarray([1, first_identity - 1, end - 1]))
    if first_identity < 2 or missing.size:
        raise RecordIOError(f"{reader.rec_path}: header record 0 says images are keys 1..{first_identity - 1} "
                            f"and identities {first_identity}..{end - 1}, but keys {missing.tolist()} are "
                            "not in the index; rebuild the index or the dataset")
    kind = "glint" if reader.read_header(1).flag > 0 else "insightface"
    return RecordLayout(kind, image_keys, (first_identity, end))


def _writable(folder: Path) -> bool:
    """Whether we may add files to `folder`. A folder without any write bit counts as read-only even
    for root, who could write it anyway (shared, read-only dataset copies)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def label_cache_path(rec_path: Path) -> Path:
    """`<rec>.labels.npz` beside the data, or $XDG_CACHE_HOME (~/.cache)/insightface_adadistill/
    when that folder is read-only (keyed by path, size and mtime)."""
    if _writable(rec_path.parent):
        return rec_path.with_suffix(".labels.npz")
    stat = rec_path.stat()
    digest = hashlib.sha1(f"{rec_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "insightface_adadistill" / f"labels-{digest[:16]}.npz"


def _load_cached_labels(cache: Path, stamp: np.ndarray, count: int) -> np.ndarray | None:
    """The cached labels if the cache belongs to this data; None means scan (and rewrite) them.

    A truncated or foreign file (not a zip, no `labels`/`stamp`, object arrays, which
    `allow_pickle=False` refuses to unpickle) is only a lost cache: warn and rebuild it.
    """
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as stored:
            labels, saved_stamp = stored["labels"], stored["stamp"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        _log.warning("label cache %s is unreadable (%s: %s); rebuilding it from the .rec", cache,
                     type(exc).__name__, exc)
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        _log.warning("label cache %s holds %s labels of shape %s, not integer ids; rebuilding it from "
                     "the .rec", cache, labels.dtype, labels.shape)
        return None
    return labels.astype(np.int64) if np.array_equal(saved_stamp, stamp) and len(labels) == count else None


def scan_labels(reader: RecordIOReader, keys: Sequence[int]) -> np.ndarray:
    """Class id of every record in `keys` (int64, same order), reading only record headers in file
    order, cached in `label_cache_path` and reused while the `.rec` is unchanged."""
    cache = label_cache_path(reader.rec_path)
    rec, idx = reader.rec_path.stat(), reader.idx_path.stat()  # the stamp: which data the cache belongs to
    stamp = np.asarray([rec.st_size, rec.st_mtime_ns, idx.st_size, idx.st_mtime_ns], dtype=np.int64)
    labels = _load_cached_labels(cache, stamp, len(keys))
    if labels is not None:
        return labels
    started = time.monotonic()
    _log.info("scanning the labels of %d records in %s once (cached in %s)", len(keys), reader.rec_path, cache)
    key_array = np.asarray(keys, dtype=np.int64)
    labels = np.empty(len(key_array), dtype=np.int64)
    for i in np.argsort(reader.offsets_of(key_array), kind="stable"):  # file order: sequential reads
        labels[i] = class_of(reader.read_header(int(key_array[i])))
    _log.info("label scan took %.1f s", time.monotonic() - started)
    try:  # atomic: ranks may scan at the same time; a failed write only costs a rescan
        atomic_write(cache, lambda fh: np.savez(fh, labels=labels.astype(np.int32), stamp=stamp))
    except OSError as exc:
        _log.warning("could not cache labels in %s (%s); they will be scanned again next time", cache, exc)
    return labels


class RecordDataset(FaceDataset):
    """A `train.rec`/`train.idx` pair in the insightface, glint or header-less layout.

    The identity count is the header's B - A when it has identity records, else it comes from the
    `labels`, which are scanned (and cached, see `scan_labels`) on first access.
    """

    def __init__(self, rec_path: str | os.PathLike, seed: int = 0, flip: bool = True) -> None:
        super().__init__(seed, flip)
        self.reader = RecordIOReader(rec_path)
        self.description = f"RecordIO dataset {self.reader.rec_path}"
        self.layout = detect_layout(self.reader)
        self._labels: np.ndarray | None = None
        header = self.layout.header
        self._header_classes = header[1] - header[0] if header and header[1] > header[0] else None
        if self._header_classes is not None:
            self.num_classes_found = self._header_classes
            self.num_classes_source = f"header record 0 {list(header)}"
        else:
            self.num_classes_found = int(self.labels.max()) + 1  # `labels` checked 0..C-1
            self.num_classes_source = "labels of the image records"

    def __len__(self) -> int:
        return len(self.layout.image_keys)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            labels = scan_labels(self.reader, self.layout.image_keys)
            found = check_labels(labels, self.description, self.layout.image_keys)
            if self._header_classes is not None and found != self._header_classes:
                raise LabelError(f"{self.description}: header record 0 promises {self._header_classes} "
                                 f"identities but the image labels are 0..{found - 1}; the .rec is "
                                 "inconsistent - rebuild it with `adadistill make-rec`")
            self._labels = labels
        return self._labels

    def _load(self, index: int) -> tuple[bytes, int, str]:
        key = int(self.layout.image_keys[index])
        where = f"{self.reader.rec_path} key {key}"
        header, payload = unpack(self.reader.read(key), where)
        return payload, class_of(header), where


def build_dataset(rec: str, num_classes: int | None, seed: int, flip: bool = True,
                  uint8: bool = False) -> FaceDataset:
    """The training dataset named by config `rec`, dispatched like arcface_torch 4.1.

    `rec` is "synthetic", a folder with `train.rec` (its `train.idx` is required) or an image folder
    with one sub-folder per identity. `num_classes` (config.num_classes) is checked against the data
    (None: no check; "synthetic" requires it, its labels cycle through it). `seed` with the epoch and
    sample index decides each flip; `flip=False` disables the flip (evaluation); `uint8=True` items
    carry uint8 pixels for the loader to normalise (the trainer). See `Sample` for the items.
    """
    if rec == "synthetic":
        if num_classes is None:
            raise LabelError("rec = 'synthetic' needs num_classes to cycle labels through; set num_classes")
        dataset: FaceDataset = SyntheticDataset(num_classes, seed, flip=flip)
    else:
        _check_rec_path(Path(rec))
        if (Path(rec) / "train.rec").is_file():
            dataset = RecordDataset(Path(rec) / "train.rec", seed=seed, flip=flip)
        else:
            dataset = ImageFolderDataset(rec, seed, flip)
    dataset.check_num_classes(num_classes)
    dataset.uint8 = uint8
    return dataset


def _check_rec_path(rec: Path) -> None:
    """Config `rec` must be a folder (with train.rec, or of identity sub-folders): say which part is off."""
    if not rec.exists():
        raise InputNotFoundError(f"rec = {str(rec)!r} does not exist; set rec to the folder holding train.rec "
                                 "and train.idx, to an image folder with one sub-folder per identity, or to "
                                 "'synthetic'")
    if rec.is_file():
        hint = (f"set rec = {str(rec.parent)!r}, its folder (arcface_torch reads <rec>/train.rec and "
                "<rec>/train.idx)" if rec.suffix in (".rec", ".idx") else
                "set rec to a folder holding train.rec and train.idx, or to an image folder")
        raise DataError(f"rec = {str(rec)!r} is a file, not a dataset folder; {hint}")
    train_rec = rec / "train.rec"
    if train_rec.exists() and not train_rec.is_file():
        raise DataError(f"{train_rec} is a directory, but a dataset folder's train.rec must be the RecordIO "
                        "file; point rec at the folder that holds the real train.rec and train.idx")
