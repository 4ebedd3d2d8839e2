"""make-rec / inspect-rec commands and `write_insightface_rec`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from insightface_adadistill.data.datasets import LabelError, build_dataset
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.commands.inspect_rec import main as inspect_rec_main
from insightface_adadistill.commands.make_rec import main as make_rec_main
from insightface_adadistill.data.rec_tools import write_insightface_rec
from insightface_adadistill.data.recordio import RecordIOReader, unpack
from insightface_adadistill.outputs import OutputFolderError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def rgb(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture()
def faces(tmp_path) -> Path:
    """Three identities (sorted names give labels 0, 1, 2) with 2, 1 and 3 images; one PNG."""
    root = tmp_path / "faces"
    for label, (name, count) in enumerate([("alice", 2), ("bob", 1), ("carol", 3)]):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(encode_jpeg(rgb(10 * label + i)))
    Image.fromarray(rgb(99)).save(root / "bob" / "extra.png")
    return root


@pytest.mark.parametrize("workers", ["1", "2"])
def test_make_rec_builds_insightface_layout(faces, tmp_path, capsys, workers):
    out = tmp_path / "rec"
    assert make_rec_main([str(faces), str(out), "--workers", workers]) == 0
    assert "7 images, 3 identities, header [8, 11]" in capsys.readouterr().out
    assert (out / "property").read_text() == "3,112,112\n"
    reader = RecordIOReader(out / "train.rec")
    assert reader.keys.tolist() == list(range(11))
    header, _ = unpack(reader.read(0))
    assert (header.flag, header.label.tolist(), header.id, header.id2) == (2, [8.0, 11.0], 0, 1)
    assert [unpack(reader.read(k))[0].label.tolist() for k in (8, 9, 10)] == [[1, 3], [3, 5], [5, 8]]
    first_jpeg = unpack(reader.read(1))[1]
    assert first_jpeg == (faces / "alice" / "0.jpg").read_bytes()  # JPEGs are stored unchanged
    dataset = build_dataset(str(out), 3, seed=0)
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2, 2] and dataset.layout.kind == "insightface"
    assert dataset[3].image.shape == (3, 112, 112)  # the PNG, re-encoded as JPEG


def test_make_rec_lists_bad_images_and_writes_nothing(faces, tmp_path, capsys):
    Image.fromarray(rgb(1, size=100)).save(faces / "alice" / "small.jpg")
    (faces / "carol" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "rec"
    assert make_rec_main([str(faces), str(out), "--workers", "1"]) == 1
    error = capsys.readouterr().err
    assert "2 of 9 images are unusable" in error
    assert "small.jpg: image is 100x100, expected 112x112" in error and "broken.jpg: cannot decode" in error
    assert not (out / "train.rec").exists() and not list(out.glob("*.partial"))


def test_make_rec_refuses_to_overwrite_without_the_flag(faces, tmp_path):
    out = tmp_path / "rec"
    assert make_rec_main([str(faces), str(out), "--workers", "1"]) == 0
    with pytest.raises(OutputFolderError, match="already holds .*train.rec.*pass --overwrite"):
        make_rec_main([str(faces), str(out), "--workers", "1"])
    assert make_rec_main([str(faces), str(out), "--workers", "1", "--overwrite"]) == 0


def test_write_insightface_rec_requires_grouped_labels(tmp_path):
    jpeg = encode_jpeg(rgb(0))
    with pytest.raises(LabelError, match="label 2 after label 0"):
        write_insightface_rec(tmp_path, [(0, jpeg), (2, jpeg)], num_classes=3)
    with pytest.raises(LabelError, match="hold 2 identities but num_classes is 3"):
        write_insightface_rec(tmp_path, [(0, jpeg), (1, jpeg)], num_classes=3)
    assert not (tmp_path / "train.rec").exists()


def test_inspect_rec_reports_layout_and_counts(fixtures_dir, capsys):
    assert inspect_rec_main([str(fixtures_dir / "glint_style"), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "layout:   glint (header record 0 = [9, 13])" in out
    assert "images:   8 (keys 1..8)" in out
    assert "classes:  4 from header, 4 (ids 0..3, contiguous) from labels" in out
    first = json.loads((fixtures_dir / "manifest.json").read_text())["glint_style"]["images"][0]
    assert str([int(v) for v in first["labels"]]) in out and "112x112" in out
    assert inspect_rec_main([str(fixtures_dir / "im2rec_style")]) == 0
    out = capsys.readouterr().out
    assert "header-less" in out and "classes:  - from header, 3 (ids 0..2, contiguous)" in out


def test_inspect_rec_rebuilds_missing_index(faces, tmp_path, capsys):
    out = tmp_path / "rec"
    make_rec_main([str(faces), str(out), "--workers", "1"])
    original = (out / "train.idx").read_text()
    (out / "train.idx").unlink()
    assert inspect_rec_main([str(out)]) == 1
    assert "--rebuild-index" in capsys.readouterr().err
    assert inspect_rec_main([str(out), "--rebuild-index"]) == 0
    assert "rebuilt" in capsys.readouterr().out and (out / "train.idx").read_text() == original
