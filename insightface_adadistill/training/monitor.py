"""Training log, TensorBoard scalars and the progress bar (arcface_torch's `utils/utils_logging.py` and
`utils/utils_callbacks.py` formats; docs/training.md#monitoring).

Rank 0 reports; the other ranks only sum the loss for the trainer's stop check (`window_loss`). Values
arrive as 0-dim device tensors and are summed there; `.item()` (a host-device sync) runs only every
`frequent` steps, when the log line is written.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, TextIO, Tuple, Union

import torch
from tqdm import tqdm

from insightface_adadistill.errors import UserError

LOG_FORMAT = "Training: %(asctime)s-%(message)s"
TENSORBOARD_DIR = "tensorboard"
FILE_ONLY = "adadistill_file_only"  # a record attribute: training.log only, not the terminal
Number = Union[float, int, torch.Tensor]

module_logger = logging.getLogger(__name__)


class _TqdmStreamHandler(logging.StreamHandler):
    """Writes to the current sys.stdout through `tqdm.write`, so lines print above a live bar."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # logging's contract: report, never raise from a handler
            self.handleError(record)


def setup_logging(output: str | os.PathLike, rank: int,
                  replay: Sequence[logging.LogRecord] = ()) -> logging.Logger:
    """The host's logging: rank 0 logs INFO to `<output>/training.log` (appending) and stdout; other ranks
    get no handlers, so their info messages vanish as in the host (warnings still reach stderr through
    Python's last-resort handler). Calling it again replaces our handlers; `replay`: see `held_log_records`."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_adadistill", False)]:
        root.removeHandler(handler)
        handler.close()
    if rank != 0:
        return root
    Path(output).mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT)
    terminal = _TqdmStreamHandler()
    terminal.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
    for handler in (logging.FileHandler(Path(output) / "training.log"), terminal):
        handler.setFormatter(formatter)
        handler._adadistill = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.info("rank_id: %d", rank)
    for record in replay:
        root.handle(record)
    return root


@contextlib.contextmanager
def held_log_records() -> Iterator[List[logging.LogRecord]]:
    """Collect the records logged inside the context instead of showing them, to replay them
    into the log once it is open (the output folder is decided before training.log is written)."""
    records: List[logging.LogRecord] = []
    holder = logging.Handler(logging.INFO)
    holder.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    level = root.level
    root.addHandler(holder)
    root.setLevel(min(level, logging.INFO) or logging.INFO)
    try:
        yield records
    finally:
        root.removeHandler(holder)
        root.setLevel(level)


@contextlib.contextmanager
def errors_logged() -> Iterator[None]:
    """Write the error or interruption that ends a run into training.log too (a cluster job's log
    would otherwise end at the config dump and look like a hang); the terminal gets it from the
    command line's one error path, so here it goes to the file only."""
    try:
        yield
    except KeyboardInterrupt as exc:
        module_logger.error("interrupted%s", f": {exc}" if str(exc) else "", extra={FILE_ONLY: True})
        raise
    except UserError as exc:
        module_logger.error("error: %s", exc, extra={FILE_ONLY: True})
        raise
    except Exception:
        module_logger.exception("stopped by an unexpected error (a bug; please report it):",
                                extra={FILE_ONLY: True})
        raise


def resolve_progress_bar(setting: Union[str, bool], stream: Optional[TextIO] = None) -> bool:
    """Config `progress_bar`: 'auto' shows a bar only on a terminal (`stream`, default the current
    sys.stdout, read at call time: a default bound at import would outlive a replaced stdout)."""
    if setting == "auto":
        return bool(getattr(sys.stdout if stream is None else stream, "isatty", lambda: False)())
    if setting not in (True, False, "true", "false"):
        raise ValueError(f"progress_bar={setting!r}; use 'auto', true or false")
    return setting in (True, "true")


class TrainingMonitor:
    """Every `frequent` global steps on rank 0: one log line (host format, then our statistics) and the
    TensorBoard tags of docs/training.md#monitoring. The host's first call only started its timer (first
    line at 2 * frequent, averaging 2 * frequent losses); ours starts at construction, lines start at step
    `frequent`, each averages exactly the steps since the previous one (the first speed includes start-up)."""

    def __init__(self, *, output: str | os.PathLike, rank: int, frequent: int, total_step: int,
                 batch_size: int, world_size: int, start_step: int = 0, grad_scaler: object = None,
                 progress_bar: Union[str, bool] = "auto", tensorboard: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.active = rank == 0
        self.frequent = frequent
        self.total_step = total_step
        self.samples_per_step = batch_size * world_size  # total over ranks, as the host prints
        self.start_step = start_step
        self.grad_scaler = grad_scaler
        self.clock = clock
        self._start_time = self._last_time = clock()
        self._last_step = start_step
        self._sums: Dict[str, Number] = {}
        self._count = 0
        self._window_ended = False  # cleared at the next update, so `window_loss` still reads the ended window
        self._histograms: Mapping[str, torch.Tensor] = {}
        self.writer = None
        self.bar = None
        self.last_verification: Optional[tuple] = None  # (global step, {set name: accuracy})
        if not self.active:
            return
        if tensorboard:  # imported here: slow to import, and only rank 0 needs it
            from torch.utils.tensorboard import SummaryWriter  # purge_step: each step shows once after a resume
            self.writer = SummaryWriter(log_dir=str(Path(output) / TENSORBOARD_DIR),
                                        purge_step=start_step + 1 if start_step > 0 else None)
        if resolve_progress_bar(progress_bar):
            self.bar = tqdm(total=total_step, initial=start_step, unit="step", file=sys.stdout,
                            dynamic_ncols=True)

    def update(self, global_step: int, *, epoch: int, loss: Number, lr: float,
               grad_norm: Optional[Number] = None, scalars: Optional[Mapping[str, Number]] = None,
               histograms: Optional[Mapping[str, torch.Tensor]] = None) -> Optional[str]:
        """Record one iteration; on log steps write the line and TensorBoard, and return the line. `loss`
        and `grad_norm` (the clipped backbone's) are 0-dim device tensors or numbers, `lr` a float (no sync);
        `scalars` by TensorBoard tag (e.g. 'distill/alpha') are averaged over the window and appended to the
        line by their last tag part; of `histograms` (e.g. per-sample alpha) only the latest are written."""
        if self._window_ended:
            self._sums, self._count = {}, 0
        self._add("loss", loss)
        self._window_ended = global_step % self.frequent == 0
        if not self.active:
            return None
        if grad_norm is not None:
            self._add("grad_norm", grad_norm)
        for tag, value in (scalars or {}).items():
            self._add(tag, value)
        self._count += 1
        if histograms:
            self._histograms = histograms
        if self.bar is not None:
            self.bar.update(global_step - self.bar.n)
        if not self._window_ended:
            return None
        return self._report(global_step, epoch, lr)

    def final_loss(self) -> Optional[Tuple[int, float]]:
        """(steps, mean loss) of the last window, also of one the run ended inside; None on other
        ranks or before any step. Reads the device once: call it at the end."""
        if not self.active or not self._count:
            return None
        total = self._sums["loss"]
        return self._count, (total.item() if isinstance(total, torch.Tensor) else total) / self._count

    @property
    def window_loss(self) -> Number:
        """The loss summed over this logging window up to the last `update` (every rank; on the
        device, no sync): what the trainer's non-finite check reads at the window's end."""
        return self._sums.get("loss", 0.0)

    def log_verification(self, global_step: int, accuracies: Mapping[str, float]) -> None:
        """TensorBoard tag `<set name>` = flip accuracy in [0, 1], as the host's verification does."""
        if self.writer is None:
            return
        self.last_verification = (global_step, dict(accuracies))
        for name, accuracy in accuracies.items():
            self.writer.add_scalar(name, accuracy, global_step)
        self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _add(self, name: str, value: Number) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float()  # stays on its device: no sync here
        self._sums[name] = self._sums.get(name, 0.0) + value

    def _report(self, global_step: int, epoch: int, lr: float) -> str:
        # The only host-device syncs: one .item() per statistic, every `frequent` steps.
        means = {name: (total.item() if isinstance(total, torch.Tensor) else total) / self._count
                 for name, total in self._sums.items()}
        now = self.clock()
        speed = (global_step - self._last_step) * self.samples_per_step / max(now - self._last_time, 1e-9)
        seconds_per_step = (now - self._start_time) / (global_step - self.start_step + 1)
        eta_hours = max(seconds_per_step * (self.total_step - global_step - 1) / 3600, 0.0)
        scale = self.grad_scaler.get_scale() if self.grad_scaler is not None and self.grad_scaler.is_enabled() else None

        line = "Speed %.2f samples/sec   Loss %.4f   LearningRate %.6f   Epoch: %d   Global Step: %d   " % (
            speed, means["loss"], lr, epoch, global_step)
        if scale is not None:
            line += "Fp16 Grad Scale: %2.f   " % scale
        line += "Required: %1.f hours" % eta_hours
        extras = {tag: v for tag, v in means.items() if tag not in ("loss", "grad_norm")}
        line += "".join("   %s=%.4f" % (tag.rsplit("/", 1)[-1], v) for tag, v in extras.items())
        module_logger.info(line)
        if self.writer is not None:
            fixed = {"time_for_end": eta_hours, "learning_rate": lr, "throughput": speed}
            for tag, value in {**fixed, **({} if scale is None else {"grad_scale": scale}), **means}.items():
                self.writer.add_scalar(tag, value, global_step)
            for tag, values in self._histograms.items():
                self.writer.add_histogram(tag, values.detach().float().cpu(), global_step)
            self._histograms = {}
        if self.bar is not None:
            self.bar.set_postfix(loss="%.4f" % means["loss"], lr="%.6f" % lr, refresh=False)
        self._last_step, self._last_time = global_step, now
        return line
