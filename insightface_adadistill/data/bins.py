"""InsightFace `.bin` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): read, write, decode.

A `.bin` is a pickle of the 2-tuple `(bins, issame_list)`: `bins` holds 2·P encoded images (JPEG or
PNG bytes of aligned faces) and `issame_list` P bools; pair i is (bins[2i], bins[2i+1]). The public
files were pickled by Python 2, so Python 3 reads them with `encoding="bytes"` (the host tries the
default encoding first and retries on UnicodeDecodeError; so do we).

Unlike the host we never run a plain `pickle.load` on a downloaded file: the unpickler refuses every
global except `_codecs.encode`, which Python 3 protocol-2 pickles need to rebuild `bytes`, and the
result must consist of bytes, lists, tuples and bools only.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from insightface_adadistill.data.decode import decode_image
from insightface_adadistill.errors import DataError, InputNotFoundError
from insightface_adadistill.outputs import atomic_write


class BinFormatError(DataError):
    """A `.bin` file is not a (images, issame) pickle of the InsightFace layout."""


def _latin1_encode(text: str, encoding: str) -> bytes:
    """The only callable a `.bin` may reference: how Python 3 pickles `bytes` at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode({type(text).__name__}, {encoding!r}) is not the bytes-rebuilding call "
            "of a protocol-2 pickle"
        )
    return codecs.encode(text, encoding)


class _BinUnpickler(pickle.Unpickler):
    """Unpickler that resolves `_codecs.encode` and nothing else (no code runs from the file)."""

    def __init__(self, file: io.BufferedIOBase, path: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise BinFormatError(
            f"{self._path}: the pickle references the global {module}.{name}, which a verification "
            "set never needs; refusing to load it (it could run arbitrary code). Rebuild the file "
            "with `write_bin` from trusted images"
        )


def _unpickle(path: Path, encoding: str) -> Any:
    with open(path, "rb") as fh:
        return _BinUnpickler(fh, path, encoding).load()


def _validate(path: Path, obj: Any) -> Tuple[List[bytes], List[bool]]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(
            f"{path}: expected a pickled 2-tuple (images, issame), got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else "")
        )
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise BinFormatError(
            f"{path}: images and issame must be lists, got {type(images).__name__} and "
            f"{type(issame).__name__}"
        )
    for i, buf in enumerate(images):
        if not isinstance(buf, (bytes, bytearray)):
            raise BinFormatError(f"{path}: image {i} is a {type(buf).__name__}, expected encoded bytes")
    for i, flag in enumerate(issame):
        if not isinstance(flag, bool):
            raise BinFormatError(f"{path}: issame[{i}] is a {type(flag).__name__}, expected a bool")
    if len(images) != 2 * len(issame):
        raise BinFormatError(
            f"{path}: {len(images)} images for {len(issame)} pairs; a verification set holds "
            "exactly 2 images per pair"
        )
    if not issame:
        raise BinFormatError(f"{path}: the set holds no pairs")
    return [bytes(b) for b in images], list(issame)


def load_bin(path: str | os.PathLike) -> Tuple[List[bytes], List[bool]]:
    """Read a `.bin` safely: (2P encoded images, P issame flags). Raises `InputNotFoundError` (a
    FileNotFoundError) for a missing path, `BinFormatError` for a wrong layout or any global."""
    path = Path(path)
    if path.is_dir():
        raise InputNotFoundError(f"{path} is a folder, not a verification set; name the .bin file inside it "
                                 f"(e.g. {path / 'lfw.bin'})")
    if not path.is_file():
        raise InputNotFoundError(f"{path}: verification set not found; check the path")
    try:
        try:
            obj = _unpickle(path, "ASCII")
        except UnicodeDecodeError:  # a Python 2 `str` holding JPEG bytes
            obj = _unpickle(path, "bytes")
    except BinFormatError:
        raise
    except Exception as exc:  # pickle raises many unrelated types on damaged input
        raise BinFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    return _validate(path, obj)


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> Path:
    """Write a `.bin` in the InsightFace layout (pickle protocol 4, readable by `load_bin`)."""
    path = Path(path)
    flags = [bool(x) if isinstance(x, np.bool_) else x for x in issame]  # numpy masks are welcome
    images, issame = _validate(path, (list(images), flags))
    return atomic_write(path, lambda fh: pickle.dump((images, issame), fh, protocol=4))


def decode_bin(images: Sequence[bytes], image_size: int = 112, source: str = "bin") -> torch.Tensor:
    """Decode encoded faces to an RGB uint8 tensor of shape (N, 3, image_size, image_size).

    Square images of another size are resized to `image_size` with Pillow's bicubic filter. The host
    resizes the short side with MXNet's OpenCV bicubic and then requires a square result, so only
    square faces were ever usable; the two bicubic kernels differ by a few grey levels at most.
    """
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.uint8)
    for i, buf in enumerate(images):
        rgb = decode_image(buf, where=f"{source}: image {i}")  # (H, W, 3)
        height, width = rgb.shape[:2]
        if height != width:
            raise BinFormatError(
                f"{source}: image {i} is {width}x{height}; verification faces must be square aligned "
                f"crops ({image_size}x{image_size}); re-align the set"
            )
        if width != image_size:
            rgb = np.array(Image.fromarray(rgb).resize((image_size, image_size), Image.BICUBIC))
        out[i] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # (3, S, S)
    return out
