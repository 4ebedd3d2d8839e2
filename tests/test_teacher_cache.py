"""Teacher cache: exact against the online teacher, resumable builds, checks on open, memory, torchrun.

A tiny random-but-saved teacher and a 256-image RecordIO set keep every run to seconds. Exactness
that holds here: on CPU a frozen teacher embeds each image independently of its batch-mates, so
a cache built with the TRAINING batch size reproduces the online run bit for bit (asserted with
torch.equal). Built with another batch size the rows may differ in the last bits (kernels block
per batch size); the test below bounds that at 1e-5 relative.
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from insightface_adadistill import distributed
from insightface_adadistill.backbones import get_model
from insightface_adadistill.cache import (
    CacheError, CachedTeacherDataset, TeacherSpec, build_teacher_cache, open_teacher_cache)
from insightface_adadistill.cache import store
from insightface_adadistill.serialization import write_json_atomic
from insightface_adadistill.commands import cache_teacher, inspect_cache
from insightface_adadistill.config import ConfigError, load_config
from insightface_adadistill.data.datasets import Sample, build_dataset
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.data.rec_tools import write_insightface_rec
from insightface_adadistill.serialization import load_file, save_file_atomic
from insightface_adadistill.commands.train import main as train_main
from run_utils import REPO, TINY, TORCHRUN, assert_same_states, latest_states

IMAGES, CLASSES, E = 256, 16, 64


def _write_rec(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    jpegs = (encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), quality=90) for _ in range(IMAGES))
    write_insightface_rec(folder, ((i * CLASSES // IMAGES, jpeg) for i, jpeg in enumerate(jpegs)), CLASSES)
    return folder


def _write_teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_file_atomic(get_model("tiny_resnet", num_features=E).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A dataset, a teacher, the `--set` list of a distillation run, and its fp32 cache."""
    root = tmp_path_factory.mktemp("cache")
    data, teacher = _write_rec(root / "data", 0), _write_teacher(root / "teacher.pt", 1)
    sets = [f"rec={data}", f"num_image={IMAGES}", "distill=adadistill", "teacher_network=tiny_resnet",
            f"teacher_weights={teacher}", "progress_bar=false", "frequent=1"]
    cache = root / "cache_fp32"
    assert cache_teacher.main([TINY, "--set", *sets, f"output={root / 'unused'}", "--out", str(cache)]) == 0
    return {"root": root, "data": data, "teacher": teacher, "sets": sets, "cache": cache}


def _train(output: Path, world: dict, *overrides: str) -> Path:
    assert train_main([TINY, "--set", *world["sets"], f"output={output}", *overrides]) == 0
    return output


def _losses(output: Path) -> list:
    return re.findall(r"Loss ([0-9.]+)", (output / "training.log").read_text())


def _assert_same_run(a: Path, b: Path, world_size: int = 1) -> None:
    """Same final checkpoint set (backbone, centres, optimizer), model.pt and loss history."""
    for sa, sb in zip(latest_states(a, world_size), latest_states(b, world_size)):
        assert_same_states(sa, sb)
    ma, mb = load_file(a / "model.pt"), load_file(b / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert _losses(a) == _losses(b) and _losses(a)


def _single() -> distributed.DistInfo:
    return distributed.DistInfo(0, 0, 1, torch.device("cpu"))


def _spec(world: dict) -> TeacherSpec:
    return TeacherSpec("tiny_resnet", str(world["teacher"]), E)


# ---------------------------------------------------------------- exactness

@pytest.mark.parametrize("distill", ["adadistill", "feature_kd"])
def test_fp32_cache_reproduces_the_online_run_bit_for_bit(tmp_path: Path, world: dict, distill: str) -> None:
    common = (f"distill={distill}", "save_every_steps=16")
    online = _train(tmp_path / "online", world, *common)
    cached = _train(tmp_path / "cached", world, *common, f"teacher_cache={world['cache']}")
    _assert_same_run(online, cached)
    assert "the teacher is not loaded" in (cached / "training.log").read_text()


def test_cached_run_resumes_exactly(tmp_path: Path, world: dict) -> None:
    args = (f"teacher_cache={world['cache']}", "save_every_steps=4", "sample_rate=0.5")
    straight = _train(tmp_path / "straight", world, *args, "max_steps=12")
    split = _train(tmp_path / "split", world, *args, "max_steps=6")
    _train(split, world, *args, "max_steps=12", "resume=True")
    assert_same_states(latest_states(straight)[0], latest_states(split)[0])


def test_other_build_batch_size_is_within_float_tolerance(tmp_path: Path, world: dict) -> None:
    dataset = build_dataset(str(world["data"]), CLASSES, 0)
    build_teacher_cache(tmp_path / "b7", dataset, _spec(world), rec=str(world["data"]), batch_size=7, dist=_single())
    exact = np.load(world["cache"] / store.ARRAY, mmap_mode="r")
    other = np.load(tmp_path / "b7" / store.ARRAY, mmap_mode="r")
    assert np.abs(exact - other).max() <= 1e-5 * np.abs(exact).max()


def test_cached_rows_follow_the_flip(world: dict) -> None:
    dataset = build_dataset(str(world["data"]), CLASSES, 2048)
    cached = CachedTeacherDataset(dataset, open_teacher_cache(world["cache"]))
    rows = np.load(world["cache"] / store.ARRAY, mmap_mode="r")
    flips = set()
    for index in range(40):
        sample = cached[(3, index)]
        assert torch.equal(sample.image, dataset[(3, index)].image)
        assert torch.equal(sample.teacher, torch.from_numpy(np.array(rows[index, int(sample.flipped)])))
        flips.add(sample.flipped)
    assert flips == {True, False}


# ---------------------------------------------------------------- builds: resume, disk full, reruns

def test_disk_full_build_is_resumable_and_ends_identical(tmp_path: Path, world: dict, monkeypatch) -> None:
    dataset = build_dataset(str(world["data"]), CLASSES, 0)
    kwargs = dict(rec=str(world["data"]), batch_size=16, dist=_single(), chunk_rows=32)
    calls = {"n": 0}
    real_pwrite = os.pwrite

    def pwrite_then_full(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(store.os, "pwrite", pwrite_then_full)
    with pytest.raises(CacheError, match="disk is full.*rerun the same command"):
        build_teacher_cache(tmp_path / "c", dataset, _spec(world), **kwargs)
    monkeypatch.setattr(store.os, "pwrite", real_pwrite)
    assert not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(CacheError, match="stopped after 3 of 8 chunks"):
        open_teacher_cache(tmp_path / "c")
    assert inspect_cache.main([str(tmp_path / "c")]) == 1
    manifest = build_teacher_cache(tmp_path / "c", dataset, _spec(world), **kwargs)
    assert manifest["rows_written"] == IMAGES and not (tmp_path / "c" / store.PROGRESS).exists()
    assert np.array_equal(np.load(tmp_path / "c" / store.ARRAY), np.load(world["cache"] / store.ARRAY))


KILLED_BUILD = """
import os, signal, sys, torch
from insightface_adadistill import distributed
from insightface_adadistill.cache import TeacherSpec, build_teacher_cache
from insightface_adadistill.data.datasets import build_dataset
data, teacher, out = sys.argv[1:4]
def progress(rows, todo):
    if rows >= 80:  # 2 chunks of 32 committed, the third half computed: kill -9 here
        os.kill(os.getpid(), signal.SIGKILL)
build_teacher_cache(out, build_dataset(data, 16, 0), TeacherSpec("tiny_resnet", teacher, 64), rec=data,
                    batch_size=16, dist=distributed.DistInfo(0, 0, 1, torch.device("cpu")), chunk_rows=32,
                    progress=progress)
"""


def test_killed_build_resumes_where_it_stopped(tmp_path: Path, world: dict) -> None:
    out = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(world["data"]), str(world["teacher"]), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / store.PROGRESS).iterdir()) == ["chunk_000000.done", "chunk_000001.done"]
    calls = []
    dataset = build_dataset(str(world["data"]), CLASSES, 0)
    build_teacher_cache(out, dataset, _spec(world), rec=str(world["data"]), batch_size=16, dist=_single(),
                        chunk_rows=32, progress=lambda rows, todo: calls.append(todo))
    assert calls[-1] == IMAGES - 64  # only the 6 uncommitted chunks were embedded again
    assert np.array_equal(np.load(out / store.ARRAY), np.load(world["cache"] / store.ARRAY))


def test_build_refuses_a_folder_it_did_not_write(tmp_path: Path, world: dict) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match="not a teacher cache"):
        cache_teacher.main([TINY, "--set", *world["sets"], "--out", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_finished_cache_is_not_rebuilt_nor_overwritten(tmp_path: Path, world: dict, capsys) -> None:
    assert cache_teacher.main([TINY, "--set", *world["sets"], "--out", str(world["cache"])]) == 0
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(CacheError, match="dtype: cache has 'fp32', this run has 'fp16'[\\s\\S]*another --out"):
        cache_teacher.main([TINY, "--set", *world["sets"], "--out", str(world["cache"]), "--dtype", "fp16"])


def test_cache_teacher_needs_a_teacher_and_errors_reach_the_cli_path(world: dict) -> None:
    with pytest.raises(CacheError, match="teacher_weights"):
        cache_teacher.main([TINY, "--set", f"rec={world['data']}"])
    cmd = [sys.executable, "-m", "insightface_adadistill", "cache-teacher", TINY, "--set", f"rec={world['data']}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "adadistill cache-teacher: error:" in proc.stderr and "teacher_weights" in proc.stderr


# ---------------------------------------------------------------- bad caches, bad configs

def _copy_cache(world: dict, dst: Path) -> Path:
    dst.mkdir()
    for name in ("manifest.json", store.ARRAY):
        (dst / name).write_bytes((world["cache"] / name).read_bytes())
    return dst


def test_cache_of_another_teacher_is_refused(tmp_path: Path, world: dict) -> None:
    other = _write_teacher(tmp_path / "other.pt", 7)
    with pytest.raises(CacheError, match=r"teacher.weights_sha256: cache has '[0-9a-f]+', this run has "
                                         r"'[0-9a-f]+'[\s\S]*cache-teacher CONFIG --out NEW_DIR"):
        _train(tmp_path / "run", world, f"teacher_cache={world['cache']}", f"teacher_weights={other}")


def test_cache_of_another_dataset_is_refused(tmp_path: Path, world: dict) -> None:
    other = _write_rec(tmp_path / "other", 5)
    with pytest.raises(CacheError, match="dataset.content_sha256: cache has"):
        _train(tmp_path / "run", world, f"teacher_cache={world['cache']}", f"rec={other}")


def test_truncated_array_is_refused(tmp_path: Path, world: dict) -> None:
    cache = _copy_cache(world, tmp_path / "c")
    with open(cache / store.ARRAY, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 100)
    with pytest.raises(CacheError, match="truncated"):
        open_teacher_cache(cache)


def test_missing_manifest_is_refused(tmp_path: Path, world: dict) -> None:
    cache = _copy_cache(world, tmp_path / "c")
    (cache / "manifest.json").unlink()
    with pytest.raises(CacheError, match="no manifest.json"):
        _train(tmp_path / "run", world, f"teacher_cache={cache}")
    with pytest.raises(CacheError, match="does not exist; build it"):
        open_teacher_cache(tmp_path / "nowhere")


def test_newer_format_version_is_refused(tmp_path: Path, world: dict) -> None:
    cache = _copy_cache(world, tmp_path / "c")
    manifest = json.loads((cache / "manifest.json").read_text())
    write_json_atomic({**manifest, "format_version": 99}, cache / "manifest.json")
    with pytest.raises(CacheError, match="format_version 99 is newer.*upgrade"):
        open_teacher_cache(cache)


@pytest.mark.parametrize("distill", ["None", "arcdistill"])
def test_teacher_cache_without_teacher_embeddings_is_a_config_error(world: dict, distill: str) -> None:
    sets = [*world["sets"], f"distill={distill}", f"teacher_cache={world['cache']}", "teacher_classifier=x.pt"]
    with pytest.raises(ConfigError, match="teacher_cache .* holds teacher embeddings, but distill"):
        load_config(TINY, sets)


# ---------------------------------------------------------------- inspect-cache

def test_inspect_prints_the_manifest_and_verifies_rows(tmp_path: Path, world: dict, capsys) -> None:
    assert inspect_cache.main([str(world["cache"]), "--verify", "6", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert '"flip": "hflip-width/v1"' in out and '"max_abs_error": 0.0' in out
    cache = _copy_cache(world, tmp_path / "c")
    rows = np.load(cache / store.ARRAY, mmap_mode="r+")
    rows[:] += 1.0  # every row wrong
    rows.flush()
    assert inspect_cache.main([str(cache), "--verify", "4", "--device", "cpu"]) == 1


# ---------------------------------------------------------------- memory

class _Indices(torch.utils.data.Dataset):
    """Stands in for a large dataset: only index and flip matter to the cache."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item) -> Sample:
        index = int(item)
        return Sample(torch.zeros(1), torch.tensor(0), index, bool(index % 2))


def _rss_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


@pytest.mark.slow
def test_random_reads_of_a_1gib_cache_keep_resident_memory_flat(tmp_path: Path, world: dict) -> None:
    shape = (262_144, 2, 512)  # 1 GiB of fp32 rows, created sparse in milliseconds
    store.create_array(tmp_path / store.ARRAY, shape, "fp32")
    manifest = json.loads((world["cache"] / "manifest.json").read_text())
    write_json_atomic({**manifest, "shape": list(shape), "rows_written": shape[0]}, tmp_path / "manifest.json")
    data = CachedTeacherDataset(_Indices(shape[0]), open_teacher_cache(tmp_path))
    order = np.random.default_rng(0).permutation(shape[0])[:60_000]
    data[0]
    before = _rss_mib()
    total = sum(float(data[int(i)].teacher[0]) for i in order)  # 60k random rows = 234 MiB read
    growth = _rss_mib() - before
    assert total == 0.0 and growth < 32, f"RSS grew {growth:.0f} MiB reading a 1024 MiB cache"


# ---------------------------------------------------------------- torchrun

def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--nproc_per_node=2", "-m", "insightface_adadistill", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_process_build_and_training_match_one_process(tmp_path: Path, world: dict) -> None:
    """2 ranks build contiguous halves: the same bytes as one process. 2-rank training from the
    cache ends where 2-rank training with the online teacher does."""
    sets = [*world["sets"], "batch_size=8", "save_every_steps=8", "max_steps=8", "num_classes=16"]
    cache = tmp_path / "cache"
    build = _torchrun("cache-teacher", TINY, "--set", *sets, "--out", str(cache), "--batch-size", "16")
    assert build.returncode == 0, build.stderr[-3000:]
    assert (cache / store.ARRAY).read_bytes() == (world["cache"] / store.ARRAY).read_bytes()
    online = _torchrun("train", TINY, "--set", *sets, f"output={tmp_path / 'online'}")
    assert online.returncode == 0, online.stderr[-3000:]
    rebuilt = tmp_path / "cache8"
    assert cache_teacher.main([TINY, "--set", *sets, "--out", str(rebuilt)]) == 0  # the training batch: 8
    cached = _torchrun("train", TINY, "--set", *sets, f"output={tmp_path / 'cached'}", f"teacher_cache={rebuilt}")
    assert cached.returncode == 0, cached.stderr[-3000:]
    _assert_same_run(tmp_path / "online", tmp_path / "cached", world_size=2)


def test_a_file_is_hashed_once_per_state_and_again_once_rewritten(tmp_path, monkeypatch):
    """Resume, the run fingerprint and the cache check all hash the teacher: one read serves them."""
    from insightface_adadistill.cache import manifest
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(b"a" * 100)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: reads.append(path) or real_open(path, *a, **k))
    first = manifest.file_sha256(weights)
    assert manifest.file_sha256(weights) == first and len(reads) == 1
    os.utime(weights, ns=(0, 1))  # the same bytes rewritten: another state, read again
    assert manifest.file_sha256(weights) == first and len(reads) == 2
    weights.write_bytes(b"b" * 100)
    assert manifest.file_sha256(weights) != first
