"""Build a teacher cache: both orientations of every training image through the frozen teacher.

Exactness: every teacher forward sees a batch of exactly `batch_size` images (the last batch is
padded by repeating its first image and the padding is dropped). A frozen, eval-mode teacher
embeds each image independently of its batch-mates, but convolution and matmul kernels may
block differently per batch size, so a cache built with the training batch size holds the very
bits the online teacher would compute. Rows are committed in chunks (`store.commit_chunk` after
fsync); `manifest.json` is written last by rank 0, so a killed build resumes where it stopped
and a manifest never claims rows that are not on disk.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from insightface_adadistill import distributed
from insightface_adadistill.outputs import CLAIM_FILES
from insightface_adadistill.cache.manifest import (
    CHECKED_FIELDS, MANIFEST, CacheError, TeacherSpec, mismatches, new_manifest, read_manifest, run_identity)
from insightface_adadistill.cache.reader import TeacherCache
from insightface_adadistill.cache.store import (
    ARRAY, BUILD, PROGRESS, RowFile, array_bytes, check_dtype, commit_chunk, create_array, pending_chunks,
    read_array_header)
from insightface_adadistill.data.datasets import FaceDataset
from insightface_adadistill.teacher import build_teacher
from insightface_adadistill.serialization import write_json_atomic

CHUNK_ROWS = 8192  # rows per commit (rounded up to whole batches): 16 MiB of fp16 rows at E = 512
# what a resumed build must share with the unfinished one, besides CHECKED_FIELDS
_BUILD_FIELDS = ["dtype", "shape", "build_batch_size", "chunk_rows", "teacher.precision", "teacher.channels_last"]
# max |cached - recomputed| / max |recomputed| that `verify_rows` accepts per storage dtype
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 8e-3}
Progress = Callable[[int, int], None]


class _PlainImages(Dataset):
    """(unflipped image, index) of each sample; the mirrored copy is made on the device."""

    def __init__(self, dataset: FaceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.load_image(int(index), False)[0], int(index)


def embed_both(teacher: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(b, 3, 112, 112), b <= batch_size -> (b, 2, E) float32: [:, 0] plain, [:, 1] mirrored; padded
    to `batch_size` so every forward has the shape training uses (see the module docstring)."""
    count = images.shape[0]
    if count < batch_size:
        images = torch.cat([images, images[:1].expand(batch_size - count, -1, -1, -1)])
    plain = teacher(images)[:count]  # (b, E)
    mirrored = teacher(images.flip(-1))[:count]  # flip along W, as `to_tensor(rgb, flip=True)`
    return torch.stack([plain, mirrored], dim=1)  # (b, 2, E)


def _prepare(folder: Path, request: Dict[str, Any]) -> str:
    """Rank 0: 'complete' (nothing to do) or 'build' after creating / checking the unfinished build;
    CacheError for a folder holding something else (a user's files are never overwritten)."""
    if folder.exists() and not folder.is_dir():
        raise CacheError(f"{folder} is a file, not a cache folder; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    fields = [*CHECKED_FIELDS, *_BUILD_FIELDS]
    if (folder / MANIFEST).is_file():
        wrong = mismatches(read_manifest(folder), request, [f for f in fields if f != "chunk_rows"])
        if wrong:
            raise CacheError(f"{folder} already holds a finished teacher cache for other settings:\n  "
                             + "\n  ".join(wrong) + f"\nchoose another --out, or delete {folder} to rebuild")
        return "complete"
    pending = folder / BUILD
    if pending.is_file():
        wrong = mismatches(json.loads(pending.read_text()), request, fields)
        if wrong:
            raise CacheError(f"{folder} holds an unfinished build with other settings:\n  " + "\n  ".join(wrong)
                             + f"\nrerun with those settings to finish it, choose another --out, or delete "
                             f"{folder} to start over")
        read_array_header(folder / ARRAY)  # its rows are what the committed chunks point at
    elif any(p.name not in CLAIM_FILES for p in folder.iterdir()):
        raise CacheError(f"{folder} exists and is not a teacher cache; choose another --out (nothing "
                         "there is overwritten)")
    remaining = len(pending_chunks(folder, request))
    needed = array_bytes([remaining * request["chunk_rows"], *request["shape"][1:]], request["dtype"])
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CacheError(f"{folder}: {needed / 2**30:.2f} GiB needed for {remaining} chunks, {free / 2**30:.2f} "
                         f"GiB free; free space (or use --dtype fp16) and rerun")
    if not pending.is_file():
        create_array(folder / ARRAY, tuple(request["shape"]), request["dtype"])
        write_json_atomic(request, pending)
    return "build"


def build_teacher_cache(folder: str | Path, dataset: FaceDataset, teacher: TeacherSpec, *, rec: str,
                        batch_size: int, dist: distributed.DistInfo, dtype: str = "fp32",
                        num_workers: int = 0, chunk_rows: Optional[int] = None,
                        progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Compute and commit every row of the cache in `folder`; return its manifest.

    Each rank embeds a contiguous slice of the chunks not yet committed; rank 0 writes
    `manifest.json` after all ranks finished. A second call on a finished cache does nothing.

    Args:
        folder: output folder (created; an unfinished build there is resumed).
        dataset: the training dataset (`build_dataset`); its `load_image` gives the exact tensors.
        teacher: what `build_teacher` loads (network, weight file, E, precision, channels_last).
        rec: the config's `rec`, recorded in the manifest.
        batch_size: images per teacher forward; the training batch size gives bit-exact rows.
        dist: this process's place in the job (rows are embedded on `dist.device`).
        dtype: storage 'fp32' (exact), 'fp16' or 'bf16'.
        num_workers: DataLoader workers decoding the images.
        chunk_rows: rows per commit (default CHUNK_ROWS, rounded up to whole batches).
        progress: called as progress(rows done, rows to do) on this rank after each batch.

    Raises:
        CacheError: the folder holds other files or another build, the disk is (or becomes) full.
    """
    folder = Path(folder)
    check_dtype(dtype)
    chunk_rows = math.ceil((chunk_rows or CHUNK_ROWS) / batch_size) * batch_size
    request = {**new_manifest(run_identity(teacher, dataset, rec), dtype, batch_size),
               "chunk_rows": chunk_rows}
    if distributed.on_main(lambda: _prepare(folder, request)) == "complete":
        return read_manifest(folder)
    pending = distributed.on_main(lambda: pending_chunks(folder, request))
    mine = pending[len(pending) * dist.rank // dist.world_size:len(pending) * (dist.rank + 1) // dist.world_size]
    if mine:
        _embed_chunks(folder, dataset, teacher, chunks=mine, request=request, dist=dist, num_workers=num_workers,
                      progress=progress)
    distributed.barrier()
    return distributed.on_main(lambda: _commit(folder, request))


def _embed_chunks(folder: Path, dataset: FaceDataset, teacher: TeacherSpec, *, chunks: Sequence[int],
                  request: Dict[str, Any], dist: distributed.DistInfo, num_workers: int,
                  progress: Optional[Progress]) -> None:
    """Embed and commit `chunks` on this rank, one fsynced chunk at a time."""
    batch_size, chunk_rows, total = request["build_batch_size"], request["chunk_rows"], request["shape"][0]
    model = build_teacher(teacher.network, teacher.weights, teacher.embedding_size, dist.device,
                          dtype=teacher.precision, channels_last=teacher.channels_last)
    rows = RowFile.open(folder / ARRAY, request["dtype"])
    # index batches that never cross a chunk boundary (a chunk is whole batches)
    batches = [list(range(start, min(start + batch_size, total))) for chunk in chunks
               for start in range(chunk * chunk_rows, min((chunk + 1) * chunk_rows, total), batch_size)]
    loader = DataLoader(_PlainImages(dataset), batch_sampler=batches, num_workers=num_workers,
                        pin_memory=dist.device.type == "cuda")
    todo, done, buffer = sum(map(len, batches)), 0, []
    try:
        for images, indices in loader:
            buffer.append(embed_both(model, images.to(dist.device, non_blocking=True), batch_size).cpu())
            done += len(indices)
            last = int(indices[-1])
            if last + 1 == total or (last + 1) % chunk_rows == 0:  # the chunk is complete
                chunk = last // chunk_rows
                rows.write(chunk * chunk_rows, torch.cat(buffer))
                commit_chunk(folder, chunk)
                buffer = []
            if progress is not None:
                progress(done, todo)
    finally:
        rows.close()


def _commit(folder: Path, request: Dict[str, Any]) -> Dict[str, Any]:
    """Rank 0, after every rank finished: write the manifest, then drop the progress records."""
    missing = pending_chunks(folder, request)
    if missing:
        raise CacheError(f"{folder}: chunks {missing[:5]} ({len(missing)} in all) were not written; rerun "
                         "the same command to finish the build")
    manifest = {**request, "rows_written": request["shape"][0]}
    write_json_atomic(manifest, folder / MANIFEST)
    (folder / BUILD).unlink()
    shutil.rmtree(folder / PROGRESS, ignore_errors=True)
    return manifest


def verify_rows(cache: TeacherCache, dataset: FaceDataset, teacher: nn.Module, *, indices: Sequence[int],
                device: torch.device) -> Dict[str, Any]:
    """Recompute rows `indices` with `teacher` (batched as the build was) and compare with the cache.

    Returns rows checked, max absolute and relative (to max |embedding|) error, the tolerance of
    the cache's dtype (`TOLERANCE`) and whether the error is within it.
    """
    batch_size, worst_abs, scale = cache.manifest["build_batch_size"], 0.0, 0.0
    for start in range(0, len(indices), batch_size):
        part = [int(i) for i in indices[start:start + batch_size]]
        images = torch.stack([dataset.load_image(i, False)[0] for i in part]).to(device)
        recomputed = embed_both(teacher, images, batch_size).cpu()  # (b, 2, E)
        stored = torch.stack([torch.stack([cache.rows.read(i, False), cache.rows.read(i, True)])
                              for i in part]).float()
        worst_abs = max(worst_abs, float((recomputed - stored).abs().max()))
        scale = max(scale, float(recomputed.abs().max()))
    relative = worst_abs / scale if scale > 0 else worst_abs
    tolerance = TOLERANCE[cache.manifest["dtype"]]
    return {"rows": len(indices), "max_abs_error": worst_abs, "max_rel_error": relative,
            "tolerance": tolerance, "ok": relative <= tolerance}
