"""Monitor: the host log line, TensorBoard tags read back, no device sync off log steps."""
from __future__ import annotations

import io
import logging
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from insightface_adadistill.training.monitor import (
    TrainingMonitor, resolve_progress_bar, setup_logging)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeScaler:
    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return 16384.0


@pytest.fixture
def root_logger():
    """Restore the root logger that setup_logging changes."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _monitor(tmp_path, clock, **kw) -> TrainingMonitor:
    settings = dict(output=tmp_path, rank=0, frequent=2, total_step=3602, batch_size=4, world_size=2,
                    progress_bar=False, clock=clock)
    return TrainingMonitor(**{**settings, **kw})


def test_setup_logging_rank0_file_and_format(tmp_path, root_logger, capsys):
    assert setup_logging(tmp_path, rank=1) is root_logger
    assert not any(getattr(h, "_adadistill", False) for h in root_logger.handlers)
    assert not (tmp_path / "training.log").exists()
    setup_logging(tmp_path, rank=0)
    setup_logging(tmp_path, rank=0)  # idempotent: still one file and one stdout handler
    assert sum(getattr(h, "_adadistill", False) for h in root_logger.handlers) == 2
    logging.getLogger("insightface_adadistill.anything").info("hello")
    lines = (tmp_path / "training.log").read_text().splitlines()
    stamp = r"Training: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}-"
    assert re.fullmatch(stamp + "rank_id: 0", lines[0]) and re.fullmatch(stamp + "hello", lines[-1])
    assert capsys.readouterr().out.splitlines()[-1].endswith("-hello")


def test_log_line_matches_host_format(tmp_path, root_logger):
    setup_logging(tmp_path, rank=0)
    clock = FakeClock()
    monitor = _monitor(tmp_path, clock, grad_scaler=FakeScaler(), tensorboard=False)
    assert monitor.update(1, epoch=0, loss=torch.tensor(1.0), lr=0.1,
                          scalars={"distill/alpha": torch.tensor(0.5)}) is None
    clock.now += 1.0
    line = monitor.update(2, epoch=0, loss=torch.tensor(2.0), lr=0.1,
                          scalars={"distill/alpha": torch.tensor(1.0)})
    # speed = 2 steps * 4 * 2 ranks / 1 s; ETA = 1 s / (2 + 1) steps * (3602 - 2 - 1) steps = 1200 s
    assert line == ("Speed 16.00 samples/sec   Loss 1.5000   LearningRate 0.100000   Epoch: 0   "
                    "Global Step: 2   Fp16 Grad Scale: 16384   Required: 0 hours   alpha=0.7500")
    clock.now += 3.0
    monitor.update(3, epoch=1, loss=5.0, lr=0.05)
    line = monitor.update(4, epoch=1, loss=7.0, lr=0.05)  # plain floats work too; window restarted
    assert line.startswith("Speed 5.33 samples/sec   Loss 6.0000   LearningRate 0.050000   Epoch: 1   "
                           "Global Step: 4   Fp16 Grad Scale: 16384   Required: 1 hours")
    assert (tmp_path / "training.log").read_text().splitlines()[-1].endswith(line)


def test_no_grad_scale_field_without_fp16(tmp_path):
    line = _monitor(tmp_path, FakeClock(), frequent=1, tensorboard=False).update(
        1, epoch=0, loss=torch.tensor(1.0), lr=0.1)
    assert "Fp16" not in line and "Required:" in line


def test_tensorboard_tags_read_back(tmp_path):
    clock = FakeClock()
    monitor = _monitor(tmp_path, clock, grad_scaler=FakeScaler())
    for step in (1, 2):
        clock.now += 0.5
        monitor.update(step, epoch=0, loss=torch.tensor(3.0), lr=0.1, grad_norm=torch.tensor(2.5),
                       scalars={"distill/alpha": torch.tensor(0.75)},
                       histograms={"distill/alpha_per_sample": torch.tensor([0.5, 0.75, 1.0])})
    monitor.log_verification(2, {"lfw": 0.995, "cfp_fp": 0.9})
    monitor.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"loss", "learning_rate", "time_for_end", "throughput", "grad_scale",
                                    "grad_norm", "distill/alpha", "lfw", "cfp_fp"}
    values = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]}
    assert values["loss"] == [(2, 3.0)] and values["grad_norm"] == [(2, 2.5)]
    assert values["learning_rate"] == [(2, pytest.approx(0.1))]
    assert values["throughput"] == [(2, pytest.approx(16.0))]
    assert values["lfw"] == [(2, pytest.approx(0.995))]
    assert tags["histograms"] == ["distill/alpha_per_sample"]
    histogram = events.Histograms("distill/alpha_per_sample")[0]
    assert histogram.step == 2 and histogram.histogram_value.num == 3


def test_reads_device_values_only_on_log_steps(tmp_path, monkeypatch):
    syncs = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            syncs.append(1)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    monitor = _monitor(tmp_path, FakeClock(), frequent=5, tensorboard=False)
    for step in range(1, 11):
        before = len(syncs)
        monitor.update(step, epoch=0, loss=torch.tensor(float(step)), lr=0.1, grad_norm=torch.tensor(1.0),
                       scalars={"distill/alpha": torch.tensor(0.5)},
                       histograms={"distill/alpha_per_sample": torch.rand(4)})
        assert (len(syncs) > before) == (step % 5 == 0), step


def test_other_ranks_report_nothing(tmp_path):
    monitor = _monitor(tmp_path, FakeClock(), rank=1, frequent=1, progress_bar=True)
    assert monitor.update(1, epoch=0, loss=torch.tensor(1.0), lr=0.1) is None
    monitor.log_verification(1, {"lfw": 1.0})
    monitor.close()
    assert not (tmp_path / "tensorboard").exists()


def test_progress_bar_setting():
    tty, pipe = io.StringIO(), io.StringIO()
    tty.isatty = lambda: True
    assert resolve_progress_bar("auto", tty) and not resolve_progress_bar("auto", pipe)
    assert resolve_progress_bar("true", pipe) and resolve_progress_bar(True, pipe)
    assert not resolve_progress_bar(False, tty) and not resolve_progress_bar("false", tty)
    with pytest.raises(ValueError, match="'yes'.*'auto', true or false"):
        resolve_progress_bar("yes")


def test_progress_bar_advances_with_global_step(tmp_path, capsys):
    monitor = _monitor(tmp_path, FakeClock(), progress_bar=True, tensorboard=False, start_step=10)
    for step in (11, 12):
        monitor.update(step, epoch=0, loss=torch.tensor(1.0), lr=0.1)
    assert monitor.bar.n == 12 and monitor.bar.total == 3602
    monitor.close()
    assert "12/3602" in capsys.readouterr().out
