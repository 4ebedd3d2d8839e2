"""Image decoding and encoding for RecordIO payloads, `.bin` sets and image folders.

JPEG goes through simplejpeg (libjpeg-turbo, the fastest maintained decoder we benchmarked, see
BENCHMARKS.md); anything else (PNG, BMP) falls back to Pillow. Everything is RGB uint8 HWC.
"""
from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image

from insightface_adadistill.errors import DataError

JPEG_SOI = b"\xff\xd8"  # the first bytes of every JPEG file


class ImageDecodeError(DataError):
    """An image payload could not be decoded; the message says where it came from."""


def decode_image(buf: bytes, where: str = "image") -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB uint8 array of shape (H, W, 3)."""
    try:
        if buf[:2] == JPEG_SOI:
            return simplejpeg.decode_jpeg(buf, colorspace="RGB")
        with Image.open(io.BytesIO(buf)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # both decoders raise several unrelated types
        raise ImageDecodeError(
            f"{where}: cannot decode {len(buf)} bytes starting {bytes(buf[:4]).hex()} ({exc}); "
            "the payload is not a valid JPEG/PNG image - rebuild the record from the source image"
        ) from exc


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H, W, 3) array as baseline JPEG (4:2:0, like cv2.imencode's default)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                  colorsubsampling="420")
