"""Interoperability with real MXNet 1.9.1, run in its own venv: our writer -> MXNet reader, and
MXNet writer -> our reader (scalar and list labels, split records, the InsightFace header layout)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.data.decode import decode_image, encode_jpeg
from insightface_adadistill.data.rec_tools import write_insightface_rec
from insightface_adadistill.data.recordio import (MAGIC_BYTES, IRHeader, RecordIOReader, pack, unpack,
                                                  write_records)

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.mxnet

# Runs inside the MXNet venv. argv: mode ("read" | "write"), then a JSON job.
MXNET_SCRIPT = r'''
import hashlib, json, sys
import numpy as np
np.bool = bool  # mxnet 1.9.1 still uses the alias removed in numpy 1.24
import mxnet as mx

def describe(header, payload):
    label = [float(header.label)] if header.flag == 0 else [float(v) for v in header.label]
    out = {"flag": int(header.flag), "label": label, "id": int(header.id), "id2": int(header.id2),
           "md5": hashlib.md5(payload).hexdigest(), "size": len(payload)}
    if payload[:2] == b"\xff\xd8":
        rgb = mx.image.imdecode(payload).asnumpy()
        out["shape"] = list(rgb.shape)
        out["rgb_mean"] = rgb.reshape(-1, 3).mean(0).tolist()
    return out

mode, job = sys.argv[1], json.loads(sys.argv[2])
if mode == "read":
    result = {}
    for name, (idx, rec) in job.items():
        reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
        records = {}
        for key in reader.keys:
            header, payload = mx.recordio.unpack(reader.read_idx(key))
            records[str(key)] = describe(header, payload)
        result[name] = {"keys": list(reader.keys), "records": records}
    print(json.dumps(result))
else:
    writer = mx.recordio.MXIndexedRecordIO(job["idx"], job["rec"], "w")
    for key, label, payload_hex in job["records"]:
        header = mx.recordio.IRHeader(0, label, key, 0)
        writer.write_idx(key, mx.recordio.pack(header, bytes.fromhex(payload_hex)))
    writer.close()
'''


def mxnet_python() -> str:
    for candidate in (os.environ.get("ADADISTILL_MXNET_PYTHON"), str(REPO_ROOT / ".venv-mxnet/bin/python")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("no MXNet python: set ADADISTILL_MXNET_PYTHON or create .venv-mxnet with `make venv-mxnet`")


def run_mxnet(mode: str, job: dict) -> dict | None:
    done = subprocess.run([mxnet_python(), "-c", MXNET_SCRIPT, mode, json.dumps(job)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"MXNet script failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout) if mode == "read" else None


def face(seed: int) -> bytes:
    return encode_jpeg(np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8))


SPLIT_PAYLOADS = [b"ab" + MAGIC_BYTES + b"cd", MAGIC_BYTES * 2 + b"tail", b"", b"abcd" + MAGIC_BYTES]


def test_mxnet_reads_our_records(tmp_path):
    """InsightFace layout from write_insightface_rec, plus a header-less file with list labels and
    payloads that force split records, read back by mx.recordio."""
    images = [(label, face(i)) for i, label in enumerate([0, 0, 1, 2, 2, 2])]
    write_insightface_rec(tmp_path / "insightface", images, num_classes=3)
    mixed = [(7, pack(IRHeader(0, [1.0, 2.5], 7, 0), SPLIT_PAYLOADS[0])),
             (2, pack(IRHeader(0, 3.0, 2, 0), SPLIT_PAYLOADS[1])),
             (5, pack(IRHeader(0, [4.0, 5.0, 6.0], 5, 0), SPLIT_PAYLOADS[2])),
             (0, pack(IRHeader(0, 9.0, 0, 0), SPLIT_PAYLOADS[3]))]
    (tmp_path / "mixed").mkdir()
    write_records(tmp_path / "mixed" / "train.rec", mixed)
    job = {name: [str(tmp_path / name / "train.idx"), str(tmp_path / name / "train.rec")]
           for name in ("insightface", "mixed")}
    seen = run_mxnet("read", job)

    insightface = seen["insightface"]
    assert insightface["keys"] == list(range(10))
    assert insightface["records"]["0"] == {"flag": 2, "label": [7.0, 10.0], "id": 0, "id2": 1,
                                           "md5": hashlib.md5(b"").hexdigest(), "size": 0}
    for key, (label, jpeg) in enumerate(images, start=1):
        record = insightface["records"][str(key)]
        assert (record["flag"], record["label"], record["id"]) == (0, [float(label)], key)
        assert record["md5"] == hashlib.md5(jpeg).hexdigest() and record["shape"] == [112, 112, 3]
        ours = decode_image(jpeg).reshape(-1, 3).mean(0)
        assert np.allclose(record["rgb_mean"], ours, atol=1.0)
    ranges = [insightface["records"][str(k)]["label"] for k in range(7, 10)]
    assert ranges == [[1.0, 3.0], [3.0, 4.0], [4.0, 7.0]]

    assert seen["mixed"]["keys"] == [7, 2, 5, 0]
    for key, record in mixed:
        header, payload = unpack(record)
        expected_label = [header.label] if header.flag == 0 else header.label.tolist()
        got = seen["mixed"]["records"][str(key)]
        assert (got["flag"], got["label"], got["md5"]) == (header.flag, expected_label,
                                                           hashlib.md5(payload).hexdigest())


def test_we_read_mxnet_records(tmp_path):
    jpeg = face(3)
    records = [[3, [1.0, 2.0, 3.0], SPLIT_PAYLOADS[0].hex()],
               [0, 4.0, SPLIT_PAYLOADS[1].hex()],
               [8, [5.0, 6.0], SPLIT_PAYLOADS[3].hex()],
               [1, 2.0, jpeg.hex()],
               [4, 0.0, ""]]
    run_mxnet("write", {"idx": str(tmp_path / "train.idx"), "rec": str(tmp_path / "train.rec"),
                        "records": records})
    reader = RecordIOReader(tmp_path / "train.rec")
    assert reader.keys.tolist() == [3, 0, 8, 1, 4]
    for key, label, payload_hex in records:
        header, payload = unpack(reader.read(key))
        assert payload == bytes.fromhex(payload_hex) and header.id == key
        assert np.allclose(header.label, label)
        assert header.flag == (len(label) if isinstance(label, list) else 0)
        assert reader.read_header(key).flag == header.flag
    RecordIOReader.rebuild_index(tmp_path / "train.rec", tmp_path / "rebuilt.idx")
    assert (tmp_path / "rebuilt.idx").read_text() == (tmp_path / "train.idx").read_text()


def test_mxnet_reads_our_dataset_like_arcface_torch(tmp_path):
    """The labels our dataset yields equal those MXFaceDataset's MXNet calls would give."""
    images = [(label, face(10 + i)) for i, label in enumerate([0, 1, 1, 2])]
    write_insightface_rec(tmp_path, images, num_classes=3)
    seen = run_mxnet("read", {"d": [str(tmp_path / "train.idx"), str(tmp_path / "train.rec")]})["d"]
    header = seen["records"]["0"]["label"]
    mx_labels = [int(seen["records"][str(k)]["label"][0]) for k in range(1, int(header[0]))]
    dataset = build_dataset(str(tmp_path), 3, seed=0, flip=False)
    assert dataset.labels.tolist() == mx_labels == [0, 1, 1, 2]
    for index in range(len(dataset)):
        rgb_mean = (dataset[index].image * 127.5 + 127.5).mean(dim=(1, 2)).numpy()
        assert np.allclose(rgb_mean, seen["records"][str(index + 1)]["rgb_mean"], atol=1.0)


def test_committed_fixtures_are_what_make_fixtures_writes(tmp_path):
    """tests/fixtures holds exactly what MXNet's writer produces from tests/fixtures/make_fixtures.py."""
    python = mxnet_python()
    if subprocess.run([python, "-c", "import cv2"], capture_output=True).returncode != 0:
        pytest.skip(f"{python} has no OpenCV (pack_img needs it): `make venv-mxnet` installs it")
    fixtures = REPO_ROOT / "tests" / "fixtures"
    done = subprocess.run([python, str(fixtures / "make_fixtures.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(fixtures) for p in fixtures.rglob("*")  # not our label caches
                       if p.is_file() and p.suffix not in (".py", ".pyc", ".npz") and p.name != "README.md")
    assert written == committed
    assert all((tmp_path / p).read_bytes() == (fixtures / p).read_bytes() for p in written)
