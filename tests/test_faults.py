"""The standing fault suite: kill -9, signals, a full disk, two runs on one folder, hostile files.

Each case asserts that nothing ran that should not have, that nothing was lost (the last
complete checkpoint set is intact and a resumed run ends bit-identical to an uninterrupted one),
and that the message names the file or folder. kill -9 inside a save is planted at each phase by
`fault_launch.py`. Hostile `.bin` verification sets are covered in test_bins.py
(`test_malicious_pickle_is_refused_without_running`, next to the format they attack); hostile
checkpoint, classifier and label-cache files are here.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from insightface_adadistill.commands.train import main
from insightface_adadistill.outputs import OutputFolderError
from insightface_adadistill.serialization import load_file
from insightface_adadistill.training.checkpoint import sets as store
from insightface_adadistill.training.checkpoint import CheckpointError, CheckpointSaveError
from run_utils import REPO, TINY, TORCHRUN, assert_same_states, latest_states

LAUNCH = str(Path(__file__).with_name("fault_launch.py"))
RUN = ("progress_bar=false", "max_steps=8", "save_every_steps=2")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(output: Path, *overrides: str) -> Path:
    assert main([TINY, "--set", f"output={output}", *RUN, *overrides]) == 0
    return output


@pytest.fixture(autouse=True)
def _one_thread():
    """The killed subprocesses run one thread (OMP_NUM_THREADS=1); bit-equality needs the same here."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every faulted run must end identical to."""
    torch.set_num_threads(1)  # module fixtures are set up before the per-test thread setting
    return _train(tmp_path_factory.mktemp("straight") / "run")


def _launch(output: Path, phase: str, nth: int, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, LAUNCH, phase, str(nth), "train", TINY, "--set", f"output={output}", *RUN, *overrides]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert condition(), "the condition never held"


# ---------------------------------------------------------------------------------- kill -9

# A random step in [2, 8] for the kill inside a step; the draw is printed in every failure message.
KILL_STEP = random.Random().randint(2, 8)
# phase planted by fault_launch.py -> (N-th event it dies at, the newest complete set it leaves)
PHASES = {"rank_file": (2, 2), "before_marker": (2, 2), "before_links": (2, 4), "pruning": (2, 6),
          "step": (KILL_STEP, KILL_STEP - 1)}


@pytest.mark.slow
def test_kill_9_inside_every_phase_of_a_save_and_at_a_random_step_resumes_exactly(tmp_path: Path,
                                                                                straight: Path) -> None:
    """One process per phase, all at once; `step` saves at every step and dies in the middle of a
    random one (planted, so the kill always lands while the run is training)."""
    procs = {phase: _launch(tmp_path / phase, phase, nth, "keep_checkpoints=1",
                            *(["save_every_steps=1"] if phase == "step" else []))
             for phase, (nth, _) in PHASES.items()}
    try:
        logs = {phase: proc.communicate(timeout=180)[0] for phase, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for phase, (_, latest_step) in PHASES.items():
        out, where = tmp_path / phase, f"{phase} (kill step {KILL_STEP})"
        assert procs[phase].returncode == -signal.SIGKILL, f"{where}: {logs[phase][-3000:]}"
        assert store.set_step(store.find_latest_complete(out)) == latest_step, where  # nothing complete lost
        _train(out, "resume=True", "keep_checkpoints=1")
        assert_same_states(latest_states(straight)[0], latest_states(out)[0])
        assert torch.equal(load_file(out / "model.pt")["conv1.conv.weight"],
                           load_file(straight / "model.pt")["conv1.conv.weight"]), where


@pytest.mark.slow
def test_kill_9_of_one_rank_then_torchrun_restart_resumes_exactly(tmp_path: Path) -> None:
    """kill -9 of rank 1 in the middle of a random step; torchrun restarts the group, which resumes."""
    args = ["train", TINY, "--set", "progress_bar=false", "max_steps=12", "save_every_steps=4", "batch_size=8"]
    out, kill_step = tmp_path / "killed", random.Random().randint(5, 12)
    # the uninterrupted reference runs at the same time
    reference = subprocess.Popen([TORCHRUN, "--nproc_per_node=2", "-m", "insightface_adadistill", *args,
                                  f"output={tmp_path / 'straight'}"], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    proc = subprocess.Popen([TORCHRUN, "--nproc_per_node=2", "--max-restarts=1", "--monitor-interval=0.5", LAUNCH,
                             "step", str(kill_step), *args, f"output={out}", "resume=True"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**ENV, "FAULT_RANK": "1", "FAULT_ONCE": str(tmp_path / "fired")},
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=300)
        reference_log, _ = reference.communicate(timeout=300)
    finally:  # never leave a hung process group behind a failed assertion
        for running in (proc, reference):
            if running.poll() is None:
                os.killpg(running.pid, signal.SIGKILL)
    assert reference.returncode == 0, reference_log[-3000:]
    assert proc.returncode == 0, f"kill step {kill_step}: {log[-3000:]}"
    assert (tmp_path / "fired").exists(), "the planted kill never fired"
    log_text = (out / "training.log").read_text()
    resumed = re.search(r"resumed from \S+: epoch \d+, batch \d+, global step (\d+)", log_text)
    assert resumed and int(resumed.group(1)) == (kill_step - 1) // 4 * 4, f"kill step {kill_step}: {log_text}"
    for a, b in zip(latest_states(tmp_path / "straight", 2), latest_states(out, 2)):
        assert_same_states(a, b)


# ---------------------------------------------------------------------------------- signals, two runs

def _endless(output: Path, frequent: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "insightface_adadistill", "train", TINY, "--set", f"output={output}",
           "progress_bar=false", f"frequent={frequent}", "num_epoch=1000", "num_image=100000"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)


def _logged(output: Path, text: str):
    log = output / "training.log"
    return lambda: log.is_file() and text in log.read_text()


@pytest.mark.slow
def test_signals_stop_cleanly_a_second_ctrl_c_aborts_and_a_second_run_is_refused(tmp_path: Path) -> None:
    """SIGTERM and Ctrl-C save at the next logging window and exit 0; a second Ctrl-C aborts at once;
    while the first run holds its folder, another run on it is refused (the three run at once)."""
    term, ctrl_c, twice = tmp_path / "term", tmp_path / "ctrl_c", tmp_path / "twice"
    procs = {term: _endless(term), ctrl_c: _endless(ctrl_c), twice: _endless(twice, frequent=10 ** 6)}
    try:
        for out in (term, ctrl_c):
            _wait_for(_logged(out, "Global Step: 2"), procs[out])
        with pytest.raises(OutputFolderError, match=rf"{term} is in use by another job \(`adadistill train`, "
                                                    rf"pid {procs[term].pid}"):
            main([TINY, "--set", f"output={term}", "resume=True", "progress_bar=false"])
        procs[term].send_signal(signal.SIGTERM)
        procs[ctrl_c].send_signal(signal.SIGINT)
        _wait_for(_logged(twice, "total_step"), procs[twice])
        procs[twice].send_signal(signal.SIGINT)
        _wait_for(_logged(twice, "Ctrl-C: saving a checkpoint"), procs[twice])
        procs[twice].send_signal(signal.SIGINT)
        logs = {out: proc.communicate(timeout=120)[0] for out, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for out in (term, ctrl_c):
        assert procs[out].returncode == 0, logs[out][-3000:]
        step = store.set_step(store.find_latest_complete(out))
        assert f"stopped by signal at global step {step}" in (out / "training.log").read_text()
        store.load_checkpoint_set(store.find_latest_complete(out), 0, 1)  # whole
    assert procs[twice].returncode != 0 and "aborted without saving" in logs[twice], logs[twice][-3000:]
    assert "interrupted: second Ctrl-C: aborted without saving" in (twice / "training.log").read_text()
    assert store.find_latest_complete(twice) is None and not list((twice / "checkpoints").glob("*/COMPLETE"))


# ---------------------------------------------------------------------------------- disk full

def test_disk_full_stops_with_the_folder_the_space_and_the_intact_set(tmp_path: Path, straight: Path,
                                                                      monkeypatch) -> None:
    real_save, writes = store.save_file_atomic, []

    def fill_up(obj, path: Path):
        writes.append(path.name)
        if writes.count("checkpoint_gpu_0.pt") == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path)

    monkeypatch.setattr(store, "save_file_atomic", fill_up)
    out = tmp_path / "run"
    with pytest.raises(CheckpointSaveError) as raised:
        _train(out)
    message = str(raised.value)
    assert f"no space left on the disk of {out / 'checkpoints' / 'step_000000004'}" in message
    assert "MiB" in message and "step_000000002 is intact" in message
    monkeypatch.setattr(store, "save_file_atomic", real_save)
    _train(out, "resume=True")
    assert_same_states(latest_states(straight)[0], latest_states(out)[0])


def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a real full disk needs a small tmpfs: run as root where mount works")
    return path


@pytest.mark.slow
def test_a_real_full_disk_keeps_the_previous_set(tmp_path: Path, straight: Path) -> None:
    set_bytes = sum(f.stat().st_size for f in store.find_latest_complete(straight).iterdir())
    disk = _tmpfs(tmp_path / "disk", f"{int(set_bytes * 2.5) // 1024}k")
    try:
        with pytest.raises(CheckpointSaveError, match="no space left on the disk of .* is intact"):
            _train(disk / "run", "keep_checkpoints=3", "frequent=100")
        assert store.find_latest_complete(disk / "run") is not None
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: the run's log file may still be open


# ---------------------------------------------------------------------------------- hostile files

class _Payload:
    """Unpickling this creates the folder `evidence`: proof that a pickle ran code."""

    def __init__(self, evidence: Path) -> None:
        self.evidence = str(evidence)

    def __reduce__(self):
        return os.mkdir, (self.evidence,)


def test_a_hostile_rank_file_is_refused_naming_it_and_runs_nothing(tmp_path: Path, straight: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    evidence = tmp_path / "pwned"
    latest = store.find_latest_complete(out)
    rank_file = latest / "checkpoint_gpu_0.pt"
    torch.save({**load_file(rank_file), "payload": _Payload(evidence)}, rank_file)
    marker = load_file(latest / store.MARKER)
    marker["files"]["checkpoint_gpu_0.pt"] = rank_file.stat().st_size  # a careful attacker fixes the sizes
    torch.save(marker, latest / store.MARKER)
    with pytest.raises(CheckpointError, match=f"{rank_file}: cannot be loaded as a weights-only"):
        _train(out, "resume=True", "max_steps=10")
    assert not evidence.exists()


def test_hostile_teacher_and_classifier_files_are_refused_naming_them(tmp_path: Path, straight: Path) -> None:
    evidence = tmp_path / "pwned"
    hostile = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"state_dict_softmax_fc": {"weight": torch.zeros(16, 64)}, "x": _Payload(evidence)}, hostile)
    with pytest.raises(ValueError, match=f"{hostile}"):
        _train(tmp_path / "kd", "distill=arcdistill", f"teacher_classifier={hostile}")
    with pytest.raises(ValueError, match=f"{hostile}"):
        _train(tmp_path / "ada", "distill=adadistill", "teacher_network=tiny_mfn", f"teacher_weights={hostile}")
    assert not evidence.exists()


def test_a_hostile_label_cache_is_never_unpickled(tmp_path: Path, caplog) -> None:
    import numpy as np

    from insightface_adadistill.data.datasets import build_dataset, label_cache_path
    from insightface_adadistill.data.decode import encode_jpeg
    from insightface_adadistill.data.recordio import IRHeader, pack, write_records

    rng = np.random.default_rng(0)
    write_records(tmp_path / "train.rec", [
        (k, pack(IRHeader(0, float(k % 2), k, 0), encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))))
        for k in range(4)])
    build_dataset(str(tmp_path), 2, seed=0)
    cache = label_cache_path(tmp_path / "train.rec")
    evidence = tmp_path / "pwned"
    with np.load(cache) as real:
        stamp = real["stamp"]
    with open(cache, "wb") as fh:
        np.savez(fh, labels=np.array([_Payload(evidence)] * 4, dtype=object), stamp=stamp)
    dataset = build_dataset(str(tmp_path), 2, seed=0)  # rebuilt from the .rec, with a warning
    assert dataset.labels.tolist() == [0, 1, 0, 1]
    assert f"label cache {cache} is unreadable" in caplog.text
    assert not evidence.exists()
