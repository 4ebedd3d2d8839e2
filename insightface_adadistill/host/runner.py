"""Register our pieces into a user's arcface_torch checkout and run its unchanged `train_v2.py`.

With `distill` or `margin = 'adaface'` set, for the duration of the run, `backbones.get_model` returns
the host's student unchanged but remembered (a head that needs the teacher gets it from a hook on that
student, `feed.TeacherFeed`), and `partial_fc_v2.PartialFC_V2(...)` returns our head built from the
same arguments (the host's margin, or our AdaFace margin, which needs the feature norms the host's
Partial FC never passes); without them nothing is replaced. The TensorBoard writer shows a resumed
run's steps once and adds our head statistics (`summary`). Everything else (DDP, its fp16
compression hook, optimizer, schedule, checkpoints, logs) is the host's own code.
"""
from __future__ import annotations

import logging
import os
import runpy
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional
from unittest.mock import patch

import torch
from torch import Tensor, nn

from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.distributed import destroy_distributed
from insightface_adadistill.heads import AdaFaceMargin, HeadArgs, build_head, head_spec
from insightface_adadistill.host.checkout import (HostCheckout, check_checkout, check_host_api, host_import_path,
                                                  import_host_module)
from insightface_adadistill.host.config import DistillSettings, HostRun, load_host_config
from insightface_adadistill.host.environment import (HostEnvironmentError, check_host_environment,
                                                     lr_scheduler_problem, lr_scheduler_without_verbose,
                                                     missing_modules_named)
from insightface_adadistill.host.feed import HostHeadCall, TeacherFeed
from insightface_adadistill.host.summary import tap_summary_writer
from insightface_adadistill.outputs import claim_output
from insightface_adadistill.teacher import build_teacher, check_embedding_sizes, load_teacher_classifier

logger = logging.getLogger(__name__)


class HostMargin:
    """The host's margin (`losses.CombinedMarginLoss`) behind our heads' margin interface.

    Our heads pass labels as (N,); the host's margin indexes them as (N, 1), as its own
    Partial FC passes them (its inter-class filter scatters with them).
    """

    def __init__(self, margin_loss: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(margin_loss):
            raise TypeError(f"PartialFC_V2 got margin_loss={margin_loss!r}, which is not callable")
        self.margin_loss = margin_loss

    def __call__(self, cos: Tensor, labels: Tensor) -> Tensor:
        return self.margin_loss(cos, labels.view(-1, 1))


@dataclass(frozen=True)
class DistillParts:
    """What the config's teacher keys name, loaded before the host starts (None where not named)."""

    teacher: Optional[nn.Module]
    teacher_classifier: Optional[Tensor]


def host_device() -> torch.device:
    """Where train_v2.py will put this process's student: cuda:LOCAL_RANK (torchrun's variable; 0
    for a single process) when torch sees a GPU, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def load_distill_parts(settings: DistillSettings, device: torch.device) -> DistillParts:
    """The frozen teacher (on `device`; a PyTorch teacher also follows the student's batches to
    theirs) and the teacher's classifier, loaded before the host's process group exists, so that a
    bad teacher file is one clear error rather than a traceback from inside train_v2.py."""
    s = settings
    spec = head_spec(s.distill)
    teacher = None
    if spec.teacher_embeddings:
        teacher = build_teacher(s.teacher_network, s.teacher_weights, s.embedding_size, device,
                                dtype=s.teacher_dtype, channels_last=s.teacher_channels_last)
        check_embedding_sizes(teacher(torch.zeros(2, 3, 112, 112, device=device)).shape[1], s.embedding_size)
    classifier = (load_teacher_classifier(s.teacher_classifier, s.num_classes, s.embedding_size)
                  if spec.teacher_classifier else None)
    return DistillParts(teacher, classifier)


@dataclass(eq=False)
class HostRegistration:
    """The `get_model` and `PartialFC_V2` replacements of one distillation run, and their state."""

    settings: DistillSettings
    parts: DistillParts
    host_get_model: Callable[..., nn.Module]
    student: Optional[nn.Module] = None
    head_call: Optional[HostHeadCall] = None

    def get_model(self, name: str, **kwargs: Any) -> nn.Module:
        """The host's model; the first one built is the student the teacher is attached to."""
        model = self.host_get_model(name, **kwargs)
        if self.student is None:
            self.student = model
        return model

    def partial_fc(self, margin_loss: Callable[[Tensor, Tensor], Tensor], embedding_size: int, num_classes: int,
                   sample_rate: float = 1.0, fp16: bool = False) -> nn.Module:
        """Our head for `distill`, with the host's margin, or our AdaFace margin for `margin = 'adaface'`
        (the host's margin_list loss is then not used). `fp16` is accepted and unused: logits are
        fp32, as in train_v2."""
        s = self.settings
        if embedding_size != s.embedding_size:
            raise RuntimeError(f"train_v2.py built PartialFC_V2 with embedding_size={embedding_size}, but the "
                               f"config says {s.embedding_size}; the teacher was checked against the config")
        margin = HostMargin(margin_loss) if s.margin == "margin_list" else AdaFaceMargin(64.0, *s.adaface)
        head = build_head(s.distill, HeadArgs(
            margin, embedding_size, num_classes, sample_rate=sample_rate, seed=s.seed, alpha=s.alpha,
            teacher_classifier=self.parts.teacher_classifier, feature_kd_weight=s.feature_kd_weight))
        feed = None
        if head_spec(s.distill).teacher_embeddings:
            if self.student is None or self.parts.teacher is None:
                raise RuntimeError("PartialFC_V2(...) was built before get_model(...) (or without a teacher): "
                                   "host-train attaches the teacher to the student, so train_v2.py must "
                                   "build the backbone first")
            feed = TeacherFeed(self.parts.teacher)
            self.student.register_forward_hook(feed.on_student_forward)
        self.head_call = HostHeadCall(head, feed)
        return head

    def stats(self) -> Dict[str, Tensor]:
        """The head's 0-dim statistics of its last step, by their TensorBoard tags."""
        last = self.head_call.stats if self.head_call is not None else {}
        return {tag: value for tag, value in last.items() if value.dim() == 0}


@contextmanager
def _host_invocation(checkout: HostCheckout, run: HostRun) -> Iterator[None]:
    """sys.argv as `train_v2.py configs/<name>`, with `configs.<name>` importable as our job config: in
    sys.modules only, so nothing is written into the checkout and a config from anywhere (with --set
    values applied) reaches the host's own config loader."""
    module_name = f"configs.{run.config_name}"
    job = ModuleType(module_name, "host-train job config")
    job.config = run.job_config
    saved_argv, saved_module = list(sys.argv), sys.modules.get(module_name)
    sys.argv[:] = [str(checkout.train_script), f"configs/{run.config_name}"]
    sys.modules[module_name] = job
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        if saved_module is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = saved_module


def check_host_data(run: HostRun) -> None:
    """Our head trusts the labels the host's loader gives it, so the dataset's identity count is
    checked against `num_classes` once, before the host starts, as `adadistill train` checks it
    (`build_dataset`: the error names both counts and the fix). The host's own 'synthetic' data has
    no identities to count."""
    rec = run.job_config.get("rec")
    if run.distill is not None and rec != "synthetic":
        build_dataset(rec, run.distill.num_classes, run.distill.seed)


def _output_claimed(run: HostRun) -> ContextManager[Any]:
    """The launching process (torchrun: rank 0) holds the run's output folder, as `adadistill train`
    does: a folder of another kind (a dataset, a cache) or one in use by another job is refused."""
    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    output = run.job_config.get("output") or os.path.join("work_dirs", run.config_name)  # the host's default
    return claim_output(output, "host-train", resume=bool(run.job_config.get("resume")))


def run_host_training(checkout_dir: str | os.PathLike, config: str | os.PathLike,
                      overrides: Optional[List[str]] = None, world_size: int = 1,
                      compatible_lr_scheduler: bool = False) -> None:
    """Check the checkout and config, register our pieces (when `distill` is set), run `train_v2.py`.

    Args:
        checkout_dir: the arcface_torch folder (holding train_v2.py).
        config: the job config file, which may set our `distill` / `teacher_*` keys.
        overrides: `--set key=value` strings.
        world_size: the number of processes (torchrun's WORLD_SIZE), for the config's derived keys.
        compatible_lr_scheduler: let `LRScheduler.__init__` drop the `verbose=` that an upstream
            lr_scheduler.py passes and this torch rejects, for this run only (no file is edited).

    Raises:
        HostCheckoutError: the folder is not an arcface_torch checkout host-train can drive.
        HostEnvironmentError: this Python lacks a module the host imports, has a numpy mxnet cannot
            import with, or the checkout's lr_scheduler.py passes `verbose=` (without the opt-in).
        ConfigError: the config fails our checks.
        DataError: the dataset's identity count is not `num_classes` (with `distill` set).
        WeightsError, InputNotFoundError: a teacher file the config names cannot be used.
        Whatever the host's own code raises, unchanged.
    """
    checkout = check_checkout(checkout_dir)
    check_host_environment(checkout)
    scheduler_problem = lr_scheduler_problem(checkout)
    if scheduler_problem is not None and not compatible_lr_scheduler:
        raise HostEnvironmentError(scheduler_problem)
    if scheduler_problem is not None:
        logger.warning("--compatible-lr-scheduler: LRScheduler.__init__ ignores the verbose= that %s "
                       "passes, for this run only", checkout.root / "lr_scheduler.py")
    run = load_host_config(config, overrides, world_size)
    check_host_data(run)
    parts = load_distill_parts(run.distill, host_device()) if run.distill is not None else None
    with _output_claimed(run), missing_modules_named(checkout), host_import_path(checkout), \
            _host_invocation(checkout, run), ExitStack() as replaced:  # undone in reverse order
        backbones = import_host_module(checkout, "backbones")
        partial_fc_v2 = import_host_module(checkout, "partial_fc_v2")
        check_host_api(checkout, backbones, partial_fc_v2)
        stats = None
        if run.distill is not None:
            registration = HostRegistration(run.distill, parts, backbones.get_model)
            replaced.enter_context(patch.object(backbones, "get_model", registration.get_model))
            replaced.enter_context(patch.object(partial_fc_v2, "PartialFC_V2", registration.partial_fc))
            stats = registration.stats
        if scheduler_problem is not None:
            replaced.enter_context(lr_scheduler_without_verbose())
        replaced.enter_context(tap_summary_writer(stats, resume=bool(run.job_config.get("resume"))))
        try:
            runpy.run_path(str(checkout.train_script), run_name="__main__")
        finally:  # train_v2 never tears down its process group; its threads must not outlive the interpreter
            destroy_distributed()
