"""Training data: MXNet RecordIO without MXNet, face datasets, the distributed loader, rec tools.

- `recordio`: `RecordIOReader` / `RecordIOWriter`, `pack` / `unpack` (byte-compatible with MXNet 1.9).
- `datasets`: `build_dataset(rec, num_classes, seed)` -> a `FaceDataset` yielding `Sample`s.
- `loader`: `build_dataloader(dataset, batch_size, rank, world_size, seed, num_workers, device)`.
- `rec_tools`: the `adadistill make-rec` / `inspect-rec` commands and `write_insightface_rec`.
- `bins`: read and write InsightFace `.bin` verification sets (safe unpickling).
- `decode`: JPEG/PNG decoding shared with the evaluation `.bin` loader.
- `hashing`: `splitmix64`, the counter-based hash behind the flips (and the synthetic faces).

The file formats are described in docs/data.md.
"""
from .datasets import (FaceDataset, ImageFolderDataset, ImageSizeError, LabelError, RecordDataset, Sample,
                       SyntheticDataset, build_dataset, flip_decision)
from .decode import ImageDecodeError, decode_image, encode_jpeg
from .loader import DistributedSampler, FaceLoader, build_dataloader
from .recordio import IRHeader, RecordIOError, RecordIOReader, RecordIOWriter, pack, unpack

__all__ = [
    "DistributedSampler", "FaceDataset", "FaceLoader", "IRHeader", "ImageDecodeError", "ImageFolderDataset",
    "ImageSizeError", "LabelError", "RecordDataset", "RecordIOError", "RecordIOReader", "RecordIOWriter",
    "Sample", "SyntheticDataset", "build_dataloader", "build_dataset", "decode_image", "encode_jpeg",
    "flip_decision", "pack", "unpack",
]
