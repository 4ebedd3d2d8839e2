"""`.bin` verification sets: the MXNet-era fixtures load, decode like MXNet, and nothing else runs."""
from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.data.bins import BinFormatError, decode_bin, load_bin, write_bin


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "manifest.json").read_text())["bins"]


@pytest.mark.parametrize("name", ["tiny_py2.bin", "tiny_py3.bin"])
def test_fixture_loads_with_payloads_intact(fixtures_dir, manifest, name):
    images, issame = load_bin(fixtures_dir / "bins" / name)
    assert len(images) == 2 * manifest["pairs"] == 24
    assert issame == manifest["issame"]
    assert [hashlib.md5(buf).hexdigest() for buf in images] == manifest["jpeg_md5"]


@pytest.mark.parametrize("name", ["tiny_py2.bin", "tiny_py3.bin"])
def test_decode_matches_mxnet_mean_colour(fixtures_dir, manifest, name):
    images, _ = load_bin(fixtures_dir / "bins" / name)
    faces = decode_bin(images)
    assert faces.shape == (24, 3, 112, 112) and str(faces.dtype) == "torch.uint8"
    means = faces.double().mean(dim=(2, 3)).numpy()  # (24, 3) RGB
    np.testing.assert_allclose(means, np.asarray(manifest["rgb_mean_mxnet"]), atol=1.0)


def _faces(n, size=112, seed=0):
    rng = np.random.default_rng(seed)
    return [encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_write_then_load_round_trip(tmp_path):
    images, issame = _faces(4), [True, np.bool_(False)]
    path = write_bin(tmp_path / "set.bin", images, issame)
    assert load_bin(path) == (images, [True, False])


def test_python3_protocol2_pickle_needs_and_gets_codecs_encode(tmp_path):
    images = _faces(2)
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps((images, [True]), protocol=2))
    assert b"_codecs" in path.read_bytes()
    assert load_bin(path) == (images, [True])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Exploit(marker), b"x"], [True]), protocol=2))
    with pytest.raises(BinFormatError, match=r"evil\.bin.*(posix|os)\.system"):
        load_bin(path)
    assert not marker.exists()


def test_codecs_encode_only_rebuilds_latin1_bytes(tmp_path):
    import _codecs

    class Sneaky:
        def __reduce__(self):
            return _codecs.encode, ("x", "rot13")

    path = tmp_path / "sneaky.bin"
    path.write_bytes(pickle.dumps(([Sneaky(), b"x"], [True]), protocol=2))
    with pytest.raises(BinFormatError, match="sneaky.bin"):
        load_bin(path)


@pytest.mark.parametrize("payload, message", [
    (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
    (([b"a", "b"], [True]), "image 1 is a str"),
    (([b"a", b"b"], [1]), r"issame\[0\] is a int"),
    (([], []), "no pairs"),
    ((b"a", b"b", b"c"), "2-tuple"),
])
def test_bad_layout_is_named(tmp_path, payload, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(BinFormatError, match=message):
        load_bin(path)


def test_not_a_pickle_and_missing_file(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x89PNG not a pickle")
    with pytest.raises(BinFormatError, match="junk.bin: not a readable pickle"):
        load_bin(path)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        load_bin(tmp_path / "nope.bin")


def test_square_faces_of_another_size_are_resized_and_others_refused():
    faces = decode_bin(_faces(2, size=128))
    assert faces.shape == (2, 3, 112, 112)
    rng = np.random.default_rng(1)
    wide = encode_jpeg(rng.integers(0, 256, (112, 96, 3), dtype=np.uint8))
    with pytest.raises(BinFormatError, match="image 0 is 96x112"):
        decode_bin([wide], source="wide.bin")
