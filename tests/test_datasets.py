"""Datasets: every RecordIO layout, image folders, synthetic data, flips, label checks, bad images."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from insightface_adadistill.data.datasets import (ImageFolderDataset, ImageSizeError, LabelError,
                                                  RecordDataset, SyntheticDataset, build_dataset,
                                                  detect_layout, exact_boundary, flip_decision,
                                                  label_cache_path, normalise_pixels, to_pixels,
                                                  to_tensor)
from insightface_adadistill.data.decode import ImageDecodeError, encode_jpeg
from insightface_adadistill.data.recordio import IRHeader, RecordIOReader, pack, write_records
from insightface_adadistill.errors import DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Label caches of read-only fixture folders go to a temporary home, never to ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "manifest.json").read_text())


def face(seed: int, size: int = 112) -> bytes:
    return encode_jpeg(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def write_headerless(folder: Path, labels: list[int], payloads: list[bytes] | None = None) -> Path:
    """An im2rec-style .rec: keys 0..N-1, scalar labels, no header record."""
    folder.mkdir(parents=True, exist_ok=True)
    payloads = payloads or [face(i) for i in range(len(labels))]
    write_records(folder / "train.rec", [(k, pack(IRHeader(0, float(label), k, 0), payload))
                                         for k, (label, payload) in enumerate(zip(labels, payloads))])
    return folder


@pytest.mark.parametrize("name,kind", [("ms1m_style", "insightface"), ("glint_style", "glint"),
                                       ("im2rec_style", "header-less")])
def test_fixture_datasets_match_manifest(fixtures_dir, manifest, name, kind):
    expected = manifest[name]
    dataset = build_dataset(str(fixtures_dir / name), expected["num_classes"], seed=0, flip=False)
    assert dataset.layout.kind == kind
    assert len(dataset) == expected["num_images"]
    assert dataset.labels.tolist() == [image["label"] for image in expected["images"]]
    for index, image in enumerate(expected["images"]):
        sample = dataset[index]
        assert sample.image.shape == (3, 112, 112) and sample.image.dtype == torch.float32
        assert sample.label.dtype == torch.int64 and int(sample.label) == image["label"]
        rgb_mean = (sample.image * 127.5 + 127.5).mean(dim=(1, 2))
        assert torch.allclose(rgb_mean, torch.tensor(image["rgb_mean"]), atol=1.0)
        assert (sample.index, sample.flipped) == (index, False)


def test_fixture_count_sources(fixtures_dir):
    ms1m = build_dataset(str(fixtures_dir / "ms1m_style"), 8, 0)
    assert ms1m.num_classes_source == "header record 0 [25, 33]"
    im2rec = build_dataset(str(fixtures_dir / "im2rec_style"), 3, 0)
    assert im2rec.num_classes_source == "labels of the image records"


def test_normalisation_and_flip_of_one_pixel():
    rgb = np.zeros((112, 112, 3), np.uint8)
    rgb[0, 0] = (255, 0, 128)
    image = to_tensor(rgb, flip=False)
    assert image[:, 0, 0].tolist() == [1.0, -1.0, pytest.approx(0.5 / 127.5)]
    assert torch.equal(to_tensor(rgb, flip=True), image.flip(2))


def test_uint8_pixels_normalise_to_the_same_bits():
    """Every uint8 value, and whole (flipped) images: loader-side normalisation == to_tensor."""
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    for image in (every_value, rgb):
        for flip in (False, True):
            pixels = to_pixels(image, flip)
            assert pixels.dtype == torch.uint8 and pixels.shape == (3,) + image.shape[:2]
            assert torch.equal(normalise_pixels(pixels[None])[0], to_tensor(image, flip))


def test_uint8_dataset_items_carry_the_pixels(fixtures_dir):
    floats = build_dataset(str(fixtures_dir / "ms1m_style"), 8, seed=5)
    pixels = build_dataset(str(fixtures_dir / "ms1m_style"), 8, seed=5, uint8=True)
    for index in range(len(floats)):
        a, b = floats[(1, index)], pixels[(1, index)]
        assert b.image.dtype == torch.uint8 and (a.label, a.index, a.flipped) == (b.label, b.index, b.flipped)
        assert torch.equal(normalise_pixels(b.image), a.image)


def test_flip_is_pure_and_balanced():
    flips = [flip_decision(2048, 3, i) for i in range(4000)]
    assert flips == [flip_decision(2048, 3, i) for i in range(4000)]
    assert 0.45 < np.mean(flips) < 0.55
    assert flips != [flip_decision(2048, 4, i) for i in range(4000)]
    assert flips != [flip_decision(2049, 3, i) for i in range(4000)]


def test_dataset_flips_follow_epoch_and_can_be_disabled(fixtures_dir):
    dataset = build_dataset(str(fixtures_dir / "ms1m_style"), 8, seed=5)
    plain = build_dataset(str(fixtures_dir / "ms1m_style"), 8, seed=5, flip=False)
    for epoch in (0, 1):
        for index in range(len(dataset)):
            sample = dataset[(epoch, index)]
            assert sample.flipped == flip_decision(5, epoch, index)
            expected = plain[index].image.flip(2) if sample.flipped else plain[index].image
            assert torch.equal(sample.image, expected)
    dataset.set_epoch(1)
    assert [dataset[i].flipped for i in range(24)] == [dataset[(1, i)].flipped for i in range(24)]


def test_synthetic_dataset_cycles_labels():
    dataset = build_dataset("synthetic", 7, seed=1)
    assert isinstance(dataset, SyntheticDataset) and len(dataset) == 1_000_000
    assert [int(dataset[i].label) for i in range(9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert torch.equal(dataset[(0, 3)].image, SyntheticDataset(7, seed=1)[(0, 3)].image)
    with pytest.raises(LabelError, match="needs num_classes"):
        build_dataset("synthetic", None, seed=1)


def make_image_folder(root: Path, counts: list[int]) -> Path:
    for label, count in enumerate(counts):
        (root / f"person_{label:02d}").mkdir(parents=True)
        for i in range(count):
            (root / f"person_{label:02d}" / f"{i}.jpg").write_bytes(face(10 * label + i))
    return root


def test_image_folder_dataset(tmp_path):
    root = make_image_folder(tmp_path / "faces", [2, 1, 3])
    (root / ".hidden").mkdir()
    (root / "person_00" / "notes.txt").write_text("ignored")
    dataset = build_dataset(str(root), 3, seed=0)
    assert isinstance(dataset, ImageFolderDataset)
    assert dataset.labels.tolist() == [0, 0, 1, 2, 2, 2] and dataset.num_classes_found == 3
    assert int(dataset[3].label) == 2 and dataset[3].image.shape == (3, 112, 112)
    (root / "person_03").mkdir()
    with pytest.raises(LabelError, match="person_03: identity folder 3 has no"):
        ImageFolderDataset(root)


def test_headerless_rec_labels_scanned_once_and_cached(tmp_path, monkeypatch):
    folder = write_headerless(tmp_path / "data", [1, 0, 2, 1])
    dataset = build_dataset(str(folder), 3, seed=0)
    assert dataset.layout.kind == "header-less" and dataset.labels.tolist() == [1, 0, 2, 1]
    assert label_cache_path(folder / "train.rec") == folder / "train.labels.npz"
    assert (folder / "train.labels.npz").is_file()
    monkeypatch.setattr(RecordIOReader, "read_header", lambda *a: pytest.fail("labels were rescanned"))
    assert build_dataset(str(folder), 3, seed=0).labels.tolist() == [1, 0, 2, 1]


def test_read_only_folder_caches_under_home(tmp_path):
    folder = write_headerless(tmp_path / "data", [0, 1])
    os.chmod(folder, 0o555)
    try:
        cache = label_cache_path(folder / "train.rec")
        assert cache.parent == tmp_path / "cache" / "insightface_adadistill"
        build_dataset(str(folder), 2, seed=0)
        assert cache.is_file() and not (folder / "train.labels.npz").exists()
    finally:
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("labels,message", [
    ([0, 2, 2], r"found labels 0..2 but ids \[1\]"),
    ([0, -1], "key 1 has label -1"),
])
def test_bad_labels_stop_with_clear_message(tmp_path, labels, message):
    folder = write_headerless(tmp_path / "data", labels)
    with pytest.raises(LabelError, match=message):
        build_dataset(str(folder), None, seed=0)


def test_num_classes_mismatch_names_count_and_fix(fixtures_dir):
    with pytest.raises(LabelError, match=r"num_classes = 10, but .* has 8 identities .* num_classes=8"):
        build_dataset(str(fixtures_dir / "ms1m_style"), 10, seed=0)


def test_num_image_mismatch_stops_with_the_real_count_and_the_fix(tmp_path):
    dataset = build_dataset(str(make_image_folder(tmp_path / "faces", [2, 1, 3])), 3, seed=0)  # 6 images
    assert dataset.check_num_image(6) is None and dataset.check_num_image(6, "warn") is None
    with pytest.raises(DataError, match=r"config num_image = 3, but image folder .*faces holds 6 images; .* the run "
                                        r"would end after 50% of the data of each epoch\. Set num_image = 6 .*"
                                        r"--set num_image=6\), or num_image_mismatch = 'warn'"):
        dataset.check_num_image(3)
    with pytest.raises(DataError, match=r"num_image = 12, .* epochs would run out at 50% of the schedule"):
        dataset.check_num_image(12, "stop")
    warning = dataset.check_num_image(12, "warn")
    assert "num_image = 12" in warning and "holds 6 images" in warning and "training on" in warning
    assert build_dataset("synthetic", 7, seed=1).check_num_image(256) is None  # no count of its own


def test_wrong_size_image_names_key_and_file(tmp_path):
    folder = write_headerless(tmp_path / "data", [0, 0], [face(0), face(1, size=96)])
    dataset = build_dataset(str(folder), 1, seed=0)
    message = rf"{folder / 'train.rec'} key 1: image is 96x96, expected 112x112"
    with pytest.raises(ImageSizeError, match=message):
        dataset[1]


def test_undecodable_jpeg_names_key_and_file(tmp_path):
    broken = face(1)[:200]
    folder = write_headerless(tmp_path / "data", [0, 0], [face(0), broken])
    dataset = build_dataset(str(folder), 1, seed=0)
    with pytest.raises(ImageDecodeError, match=rf"{folder / 'train.rec'} key 1: cannot decode"):
        dataset[1]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    with pytest.raises(ImageDecodeError, match="train.rec key 1: cannot decode"):
        next(iter(loader))


def test_missing_index_and_bad_path_messages(tmp_path):
    folder = write_headerless(tmp_path / "data", [0])
    (folder / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match="--rebuild-index"):
        build_dataset(str(folder), 1, seed=0)
    with pytest.raises(FileNotFoundError, match="'.*nowhere' does not exist; set rec to the folder"):
        build_dataset(str(tmp_path / "nowhere"), 1, seed=0)


def test_rec_pointing_at_train_rec_names_its_folder(tmp_path):
    folder = write_headerless(tmp_path / "data", [0])
    with pytest.raises(DataError, match=rf"is a file, not a dataset folder; set rec = '{folder}', its folder"):
        build_dataset(str(folder / "train.rec"), 1, seed=0)


def test_train_rec_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "data" / "train.rec").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train.rec is a directory, but .* must be the RecordIO file"):
        build_dataset(str(tmp_path / "data"), 1, seed=0)


class _Payload:
    """Unpickling this would create `ran`: proof that a poisoned cache was never unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("poison", ["truncated", "not_a_zip", "pickled_objects", "missing_key", "2d_labels"])
def test_damaged_label_cache_is_rebuilt_with_a_warning(tmp_path, caplog, poison):
    folder = write_headerless(tmp_path / "data", [1, 0, 2, 1])
    cache = folder / "train.labels.npz"
    build_dataset(str(folder), 3, seed=0).labels  # writes a valid cache
    good = cache.read_bytes()
    marker = tmp_path / "ran"
    if poison == "truncated":
        cache.write_bytes(good[: len(good) // 2])
    elif poison == "not_a_zip":
        cache.write_bytes(b"\x00" * 64)
    elif poison == "pickled_objects":
        np.savez(cache, labels=np.array([_Payload(marker)], dtype=object), stamp=np.zeros(4, np.int64))
    elif poison == "missing_key":
        np.savez(cache, stamp=np.zeros(4, np.int64))
    else:
        np.savez(cache, labels=np.zeros((4, 2), np.int32), stamp=np.zeros(4, np.int64))
    with caplog.at_level(logging.WARNING, logger="insightface_adadistill.data.datasets"):
        labels = build_dataset(str(folder), 3, seed=0).labels
    assert labels.tolist() == [1, 0, 2, 1] and not marker.exists()
    assert f"label cache {cache}" in caplog.text and "rebuilding it" in caplog.text
    with np.load(cache, allow_pickle=False) as rebuilt:  # rewritten: the next run reads it again
        assert rebuilt["labels"].tolist() == [1, 0, 2, 1]


def test_headerless_glint_style_key0_image_is_not_a_header(tmp_path):
    folder = tmp_path / "glint"
    folder.mkdir()
    write_records(folder / "train.rec", [(k, pack(IRHeader(0, [float(k % 2), 5.0], k, 0), face(k)))
                                         for k in range(3)])
    dataset = build_dataset(str(folder), 2, seed=0)
    assert dataset.layout.kind == "header-less" and dataset.labels.tolist() == [0, 1, 0]


def test_exact_boundary_recovers_values_above_float32_precision():
    for true_value in (16_777_217, 16_777_219, 42_474_558, 42_474_559):
        approx = float(np.float32(true_value))
        assert exact_boundary(approx, lambda k, v=true_value: k < v, "test") == true_value
    assert exact_boundary(1234.0, lambda k: pytest.fail("exact below 2**24"), "test") == 1234


def test_detect_layout_with_inexact_header(tmp_path):
    """A header above 2**24 (a Glint360K-sized rec), with only the records near the boundaries."""
    first_identity, end = 16_777_219, 16_777_223  # float32 stores 16777220 and 16777224
    image_keys = [1, first_identity - 2, first_identity - 1]
    records = [(0, pack(IRHeader(0, [float(first_identity), float(end)], 0, 1), b""))]
    records += [(k, pack(IRHeader(0, 0.0, k, 0), b"jpeg")) for k in image_keys]
    records += [(k, pack(IRHeader(0, [1.0, 2.0], k, 0), b"")) for k in range(first_identity, end)]
    write_records(tmp_path / "train.rec", records)
    layout = detect_layout(RecordIOReader(tmp_path / "train.rec"))
    assert layout.kind == "insightface" and layout.header == (first_identity, end)
    assert layout.image_keys == range(1, first_identity)


def test_record_dataset_is_picklable(fixtures_dir):
    import pickle

    dataset = RecordDataset(fixtures_dir / "ms1m_style" / "train.rec", seed=3)
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[(0, 5)].image, dataset[(0, 5)].image)
