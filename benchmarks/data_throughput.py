"""Data pipeline throughput: read + decode + flip + normalise + collate, in images per second.

Writes a temporary InsightFace-style .rec of synthetic 112x112 face-like JPEGs, then times one
epoch of the real training loader (`build_dataset` + `build_dataloader`) per JPEG decoder
(simplejpeg - our default, PIL, cv2 if importable) and per worker count, for float32 items
normalised in the workers and for the trainer's uint8 items (normalised by the loader, or as
shipped by the workers, which is what a GPU run's host does), and, when an MXNet
python is available ($ADADISTILL_MXNET_PYTHON or .venv-mxnet), the same steps on MXNet's
MXIndexedRecordIO + mx.image.imdecode in that venv. One JSON line per configuration, then a
summary line with ratios against MXNet.

    .venv/bin/python benchmarks/data_throughput.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/data_throughput.py --images 20000 --workers 0 2 4 8
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from insightface_adadistill.data.datasets import RecordDataset, build_dataset
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.data.loader import build_dataloader
from insightface_adadistill.data.rec_tools import write_insightface_rec
from insightface_adadistill.data.recordio import unpack

REPO_ROOT = Path(__file__).resolve().parents[1]
UINT8 = "adadistill-uint8"  # uint8 from the workers, normalised by the loader (on the CPU here)
SHIPPED = "adadistill-uint8-shipped"  # the same batches as the workers hand them over (a GPU run normalises there)

# Runs in the MXNet venv: one epoch of read + unpack + imdecode + flip + normalise + stack per line
# read from stdin, answering with images/s, so that its rounds interleave with ours.
MXNET_PIPELINE = r'''
import sys, time
import numpy as np
np.bool = bool
import mxnet as mx
idx, rec, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
header, _ = mx.recordio.unpack(reader.read_idx(0))
keys = list(range(1, int(header.label[0])))
rng = np.random.default_rng(0)
for _ in sys.stdin:
    started, batch = time.perf_counter(), []
    for key in keys:
        header, payload = mx.recordio.unpack(reader.read_idx(key))
        rgb = mx.image.imdecode(payload).asnumpy()
        if rng.random() < 0.5:
            rgb = rgb[:, ::-1]
        batch.append((rgb.transpose(2, 0, 1).astype(np.float32) - 127.5) / 127.5)
        if len(batch) == batch_size:
            np.stack(batch)
            batch = []
    print(len(keys) // batch_size * batch_size / (time.perf_counter() - started), flush=True)
'''


def face_like_jpeg(rng: np.random.Generator) -> bytes:
    """A smooth 112x112 image with mild noise, so JPEG size (~5-8 KB) resembles aligned faces."""
    coarse = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    smooth = np.kron(coarse, np.ones((14, 14, 1), np.float32))
    noisy = smooth + rng.normal(0, 6, smooth.shape)
    return encode_jpeg(np.clip(noisy, 0, 255).astype(np.uint8), quality=95)


def write_benchmark_rec(folder: Path, num_images: int, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    labels = np.sort(np.arange(num_images) % num_classes)
    write_insightface_rec(folder, ((int(label), face_like_jpeg(rng)) for label in labels), num_classes)


def _decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    """JPEG -> RGB (H, W, 3) uint8, per library."""
    import simplejpeg
    from PIL import Image

    decoders = {
        "simplejpeg": lambda buf: simplejpeg.decode_jpeg(buf, colorspace="RGB"),
        "pil": lambda buf: np.asarray(Image.open(io.BytesIO(buf)).convert("RGB")),
    }
    try:
        import cv2

        cv2.setNumThreads(1)
        decoders["cv2"] = lambda buf: cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    except ImportError:
        pass
    return decoders


class DecoderDataset(RecordDataset):
    """The training RecordDataset with another JPEG decoder (everything else unchanged)."""

    def __init__(self, rec_path: Path, decoder_name: str) -> None:
        super().__init__(rec_path, seed=0)
        self._decode = _decoders()[decoder_name]

    def _load(self, index: int) -> tuple[np.ndarray, int, str]:
        key = int(self.layout.image_keys[index])
        header, payload = unpack(self.reader.read(key))
        return self._decode(payload), int(header.label), f"key {key}"


class LoaderRun:
    """One configuration of our pipeline: the training loader over the whole .rec, warmed up.

    `shipped=True` iterates the DataLoader inside the `FaceLoader`: the uint8 batches as the
    workers hand them over, before the normalisation that a GPU run does on the GPU.
    """

    def __init__(self, dataset, batch_size: int, workers: int, device: str = "cpu", shipped: bool = False) -> None:
        face_loader = build_dataloader(dataset, batch_size, rank=0, world_size=1, seed=0, num_workers=workers,
                                       device=device)
        self.face_loader = face_loader
        self.loader = face_loader.loader if shipped else face_loader
        self.cuda = device == "cuda"
        self.epoch = 0
        self.images_per_s()  # starts the persistent workers and fills the page cache

    def images_per_s(self) -> float:
        self.face_loader.set_epoch(self.epoch)
        self.epoch += 1
        started = time.perf_counter()
        count = sum(len(batch.label) for batch in self.loader)
        if self.cuda:
            torch.cuda.synchronize()  # the last copies are asynchronous
        return count / (time.perf_counter() - started)


class MXNetRun:
    """The same steps on MXNet 1.9.1 in its own venv, one epoch per request."""

    def __init__(self, python: str, folder: Path, batch_size: int) -> None:
        self.process = subprocess.Popen(  # MXNet's default engine threads, as users run it
            [python, "-c", MXNET_PIPELINE, str(folder / "train.idx"), str(folder / "train.rec"), str(batch_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.images_per_s()  # warm-up

    def images_per_s(self) -> float:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the MXNet pipeline exited; run it by hand to see its error")
        return float(answer)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def mxnet_python() -> str | None:
    for candidate in (os.environ.get("ADADISTILL_MXNET_PYTHON"), str(REPO_ROOT / ".venv-mxnet/bin/python")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="JPEGs in the temporary .rec")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to time")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed epochs per configuration, interleaved across configurations; best kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-image work; extra intra-op threads only contend with workers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_benchmark_rec(folder, args.images, args.classes)
        jpeg_kb = (folder / "train.rec").stat().st_size / args.images / 1024
        runs = {}

        def dataset(uint8: bool = False):
            return build_dataset(str(folder), args.classes, seed=0, uint8=uint8)

        for name in _decoders():
            runs[("adadistill", name, 0)] = LoaderRun(
                dataset() if name == "simplejpeg" else DecoderDataset(folder / "train.rec", name), args.batch_size, 0)
        for workers in (w for w in args.workers if w > 0):
            runs[("adadistill", "simplejpeg", workers)] = LoaderRun(dataset(), args.batch_size, workers)
        for workers in args.workers:  # the trainer's path: uint8 from the workers
            runs[(UINT8, "simplejpeg", workers)] = LoaderRun(dataset(True), args.batch_size, workers)
            runs[(SHIPPED, "simplejpeg", workers)] = LoaderRun(dataset(True), args.batch_size, workers, shipped=True)
        if torch.cuda.is_available():  # pinned memory + side-stream copies, most workers
            runs[("adadistill-to-cuda", "simplejpeg", max(args.workers))] = LoaderRun(
                dataset(), args.batch_size, max(args.workers), device="cuda")
            runs[(UINT8 + "-to-cuda", "simplejpeg", max(args.workers))] = LoaderRun(
                dataset(True), args.batch_size, max(args.workers), device="cuda")
        python = mxnet_python()
        if python:
            runs[("mxnet-1.9.1", "mx.image.imdecode", 0)] = MXNetRun(python, folder, args.batch_size)
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.rounds):  # interleaved, so load from other processes hits all alike
            for config, run in runs.items():
                best[config] = max(best[config], run.images_per_s())
        for run in runs.values():
            if isinstance(run, MXNetRun):
                run.close()

    mxnet_rate = next((rate for (pipeline, _, _), rate in best.items() if pipeline.startswith("mxnet")), None)
    for (pipeline, decoder, workers), rate in best.items():
        line = {"pipeline": pipeline, "decoder": decoder, "workers": workers, "images_per_s": round(rate, 1),
                "images_per_s_per_worker": round(rate / max(workers, 1), 1)}
        if mxnet_rate:
            line["ratio_vs_mxnet"] = round(rate / mxnet_rate, 2)
            line["per_worker_vs_mxnet"] = round(rate / max(workers, 1) / mxnet_rate, 2)
        print(json.dumps(line))
    before = {w: r for (p, d, w), r in best.items() if p == "adadistill" and d == "simplejpeg"}
    after = {w: r for (p, _, w), r in best.items() if p == SHIPPED}
    per_worker = {w: round(after[w] / before[w], 2) for w in after if w in before}
    print(json.dumps({"summary": True, "cpu": cpu_name(), "cores": os.cpu_count(),
                      "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                      "images": args.images, "avg_jpeg_kb": round(jpeg_kb, 2), "batch_size": args.batch_size,
                      "rounds": args.rounds, "torch": torch.__version__,
                      "mxnet": "1.9.1" if mxnet_rate else "not available",
                      "uint8_shipped_vs_float_by_workers": per_worker,
                      "target": "per worker >= 3x MXNet's single-process reader + decoder"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
