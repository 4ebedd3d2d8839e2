"""Training data: MXNet RecordIO without MXNet, face datasets, the distributed loader, rec tools.

- `recordio`: `RecordIOReader` / `RecordIOWriter`, `pack` / `unpack` (byte-compatible with MXNet 1.9).
- `datasets`: `build_dataset(rec, num_classes, seed)` -> a `FaceDataset` yielding `Sample`s.
- `loader`: `build_dataloader(dataset, batch_size, rank, world_size, seed, num_workers, device)`.
- `rec_tools`: the `adadistill make-rec` / `inspect-rec` commands and `write_insightface_rec`.
- `bins`: read and write InsightFace `.bin` verification sets (safe unpickling).
- `decode`: JPEG/PNG decoding shared with the evaluation `.bin` loader.
- `hashing`: `splitmix64`, the counter-based hash behind the flips (and the synthetic faces).

The file formats are described in docs/data.md. Nothing is imported here, so `recordio`, `decode` and
`hashing` load without torch.
"""
