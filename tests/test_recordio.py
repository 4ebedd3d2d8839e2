"""RecordIO reader/writer: MXNet-written fixtures, byte-exact rewrites, round trips and bad files."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from insightface_adadistill.data.recordio import (MAGIC_BYTES, IRHeader, RecordIOError, RecordIOReader,
                                                  RecordIOWriter, encode_chunks, pack, scan_chunks,
                                                  scan_records, split_record, unpack, write_records)

REC_FIXTURES = ("ms1m_style", "glint_style", "im2rec_style", "split_record")


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "manifest.json").read_text())


def _reader(fixtures_dir: Path, name: str) -> RecordIOReader:
    return RecordIOReader(fixtures_dir / name / "train.rec")


@pytest.mark.parametrize("name", ["ms1m_style", "glint_style", "im2rec_style"])
def test_fixture_images_match_manifest(fixtures_dir, manifest, name):
    reader = _reader(fixtures_dir, name)
    for image in manifest[name]["images"]:
        header, payload = unpack(reader.read(image["key"]))
        labels = [header.label] if header.flag == 0 else header.label.tolist()
        assert header.flag == image["flag"]
        assert labels == image["labels"]
        assert header.id == image["key"]
        assert hashlib.md5(payload).hexdigest() == image["jpeg_md5"]
        assert reader.read_header(image["key"]).flag == image["flag"]


def test_fixture_keys_keep_index_order(fixtures_dir, manifest):
    im2rec = _reader(fixtures_dir, "im2rec_style")
    assert im2rec.keys.tolist() == [image["key"] for image in manifest["im2rec_style"]["images"]]
    ms1m = _reader(fixtures_dir, "ms1m_style")
    assert ms1m.keys.tolist() == list(range(manifest["ms1m_style"]["header"][1]))


@pytest.mark.parametrize("name", ["ms1m_style", "glint_style"])
def test_fixture_header_and_identity_records(fixtures_dir, manifest, name):
    reader, expected = _reader(fixtures_dir, name), manifest[name]
    header, payload = unpack(reader.read(0))
    assert (header.flag, header.label.tolist(), payload) == (2, expected["header"], b"")
    for identity in expected["identities"]:
        header, payload = unpack(reader.read(identity["key"]))
        assert header.label.tolist() == identity["range"] and payload == b""
        assert identity["key"] - expected["header"][0] == identity["label"]


def test_split_record_fixture_bodies_and_chunks(fixtures_dir, manifest):
    expected = manifest["split_record"]
    rec_path = fixtures_dir / "split_record" / "train.rec"
    reader = RecordIOReader(rec_path)
    for record in expected["records"]:
        packed = reader.read(record["key"])
        header, body = unpack(packed)
        assert hashlib.md5(packed).hexdigest() == record["packed_md5"]
        assert (header.label, body.hex()) == (record["label"], record["body_hex"])
        assert reader.read_header(record["key"]).label == record["label"]
    assert [list(chunk) for chunk in scan_chunks(rec_path)] == expected["physical_chunks"]
    assert rec_path.stat().st_size == expected["rec_bytes"]


@pytest.mark.parametrize("name", REC_FIXTURES)
def test_writer_reproduces_mxnet_bytes(fixtures_dir, tmp_path, name):
    """Rewriting every record with our writer gives MXNet's .rec and .idx byte for byte."""
    reader = _reader(fixtures_dir, name)
    write_records(tmp_path / "train.rec", [(key, record) for key, record in reader])
    assert (tmp_path / "train.rec").read_bytes() == reader.rec_path.read_bytes()
    assert (tmp_path / "train.idx").read_text() == reader.idx_path.read_text()


def test_scan_records_matches_index(fixtures_dir):
    reader = _reader(fixtures_dir, "split_record")
    scanned = list(scan_records(reader.rec_path))
    assert [offset for offset, _ in scanned] == [reader.offset(int(k)) for k in reader.keys]
    assert [record for _, record in scanned] == [record for _, record in reader]


BODIES = {
    "plain": b"abcdefgh",
    "empty": b"",
    "magic_aligned": b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES,
    "magic_unaligned": b"ab" + MAGIC_BYTES + b"cdefg",
    "magic_start_and_run": MAGIC_BYTES * 3 + b"x",
    "magic_only": MAGIC_BYTES,
    "odd_length": b"abcde",
}


@pytest.mark.parametrize("label", [3.0, [1.0, 2.0], [7.0, 8.0, 9.0]], ids=["scalar", "two", "three"])
@pytest.mark.parametrize("body_name", sorted(BODIES))
def test_round_trip(tmp_path, body_name, label):
    body = BODIES[body_name]
    # A header before the body shifts it by 24 (+4 per label) bytes; also test the raw body alone.
    items = [(5, pack(IRHeader(0, label, 5, 0), body)), (2, body), (9, pack(IRHeader(0, label, 9, 1), b""))]
    write_records(tmp_path / "x.rec", items)
    reader = RecordIOReader(tmp_path / "x.rec")
    assert reader.keys.tolist() == [5, 2, 9]
    assert [reader.read(key) for key, _ in items] == [record for _, record in items]
    header, payload = unpack(reader.read(5))
    assert payload == body and header.id == 5
    assert np.allclose(header.label, label) and header.flag == (0 if isinstance(label, float) else len(label))
    assert reader.read_header(5).flag == header.flag


def test_split_only_at_aligned_magic():
    record = b"xx" + MAGIC_BYTES + b"yy" + MAGIC_BYTES + b"zz"  # second magic at offset 8
    assert split_record(record) == [b"xx" + MAGIC_BYTES + b"yy", b"zz"]
    assert len(encode_chunks(record)) % 4 == 0


def test_pack_numeric_label_forces_flag_zero():
    header, payload = unpack(pack(IRHeader(7, np.int64(4), 1, 2), b"img"))
    assert header == IRHeader(0, 4.0, 1, 2) and payload == b"img"
    assert len(pack(IRHeader(0, 1.0, 0, 0), b"")) == 24


def test_float32_labels_are_inexact_above_2_pow_24():
    header, _ = unpack(pack(IRHeader(0, [42_474_558.0, 1.0], 0, 0), b""))
    assert header.label.dtype == np.float32 and header.label[0] == 42_474_560


def test_unpack_short_record_errors():
    with pytest.raises(RecordIOError, match="shorter than the 24-byte"):
        unpack(b"\0" * 10, "mydata key 3")
    with pytest.raises(RecordIOError, match="mydata key 3: header says 4 float32 labels"):
        unpack((4).to_bytes(4, "little") + b"\0" * 20, "mydata key 3")


@pytest.fixture()
def small_rec(tmp_path) -> Path:
    write_records(tmp_path / "train.rec", [(k, pack(IRHeader(0, float(k), k, 0), bytes(40 + k)))
                                           for k in range(4)])
    return tmp_path / "train.rec"


def test_missing_index_says_how_to_rebuild(small_rec):
    original = small_rec.with_suffix(".idx").read_text()
    small_rec.with_suffix(".idx").unlink()
    with pytest.raises(FileNotFoundError, match="inspect-rec .* --rebuild-index"):
        RecordIOReader(small_rec)
    assert RecordIOReader.rebuild_index(small_rec) == 4
    assert small_rec.with_suffix(".idx").read_text() == original


def test_rebuild_index_of_fixtures(fixtures_dir, tmp_path):
    for name in REC_FIXTURES:
        shutil.copy(fixtures_dir / name / "train.rec", tmp_path / f"{name}.rec")
        RecordIOReader.rebuild_index(tmp_path / f"{name}.rec")
        assert (tmp_path / f"{name}.idx").read_text() == (fixtures_dir / name / "train.idx").read_text()


def test_bad_magic_names_file_and_offset(small_rec):
    reader = RecordIOReader(small_rec)
    lines = [f"{int(key)}\t{reader.offset(int(key)) + 4 * (key == 2)}\n" for key in reader.keys]
    small_rec.with_suffix(".idx").write_text("".join(lines))
    shifted = reader.offset(2) + 4
    message = rf"{small_rec}: bad magic .* at byte offset {shifted} \(record key 2\)"
    with pytest.raises(RecordIOError, match=message):
        RecordIOReader(small_rec).read(2)


def test_truncated_record_names_file_key_and_offset(small_rec):
    small_rec.write_bytes(small_rec.read_bytes()[:-20])
    reader = RecordIOReader(small_rec)
    with pytest.raises(RecordIOError, match=rf"{small_rec}: record key 3 is truncated at byte offset \d+"):
        reader.read(3)
    with pytest.raises(RecordIOError, match="truncated chunk at byte offset"):
        list(scan_records(small_rec))


def test_malformed_and_duplicate_index(small_rec):
    idx = small_rec.with_suffix(".idx")
    idx.write_text("0\t0\n1\tforty\n")
    with pytest.raises(RecordIOError, match=rf"{idx}: not a RecordIO index"):
        RecordIOReader(small_rec)
    idx.write_text("1\t0\n1\t48\n")
    with pytest.raises(RecordIOError, match="key 1 appears more than once"):
        RecordIOReader(small_rec)


def test_unknown_key(small_rec):
    reader = RecordIOReader(small_rec)
    assert 3 in reader and 4 not in reader
    with pytest.raises(KeyError, match="key 4 is not in"):
        reader.read(4)
    assert reader.missing_keys(np.array([0, 4, -1])).tolist() == [4, -1]


def _read_in_child(reader: RecordIOReader) -> bytes:
    return reader.read(2)


def test_reader_survives_pickle_and_fork(small_rec):
    reader = RecordIOReader(small_rec)
    expected = reader.read(2)  # opens the descriptor in the parent before forking
    assert pickle.loads(pickle.dumps(reader)).read(2) == expected
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_read_in_child, (reader,)) == expected
    assert reader.read(2) == expected


def test_writer_removes_partial_files_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordIOWriter(tmp_path / "train.rec") as writer:
            writer.write(0, b"abc")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_duplicate_keys_and_resized_overwrite(tmp_path):
    with RecordIOWriter(tmp_path / "train.rec") as writer:
        writer.write(0, b"abcd")
        with pytest.raises(RecordIOError, match="key 0 was already written"):
            writer.write(0, b"x")
        with pytest.raises(RecordIOError, match="needs the same size"):
            writer.overwrite(0, b"abcdefgh")
        writer.overwrite(0, b"wxyz")
    assert RecordIOReader(tmp_path / "train.rec").read(0) == b"wxyz"
