"""The one place a run's models are assembled: student, head, frozen teacher, DDP and the step.

`assemble(cfg, dist)` reads the config and the head's declaration (`heads.head_spec`): the teacher is
loaded only for a head that takes teacher embeddings, its classifier only for a head built from it. The
trainer and the benchmarks (`train_throughput.py`, `cache_epoch.py`) call it, so what they time trains.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from insightface_adadistill import distributed
from insightface_adadistill.backbones import get_model
from insightface_adadistill.config import RunConfig
from insightface_adadistill.heads import HeadArgs, build_head, build_margin, head_spec
from insightface_adadistill.teacher import build_teacher, check_embedding_sizes, load_teacher_classifier
from insightface_adadistill.training.compile import compile_step
from insightface_adadistill.training.step import DistillStep

_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


class Models(NamedTuple):
    """What `assemble` built: the bare `student` (optimizer, checkpoints, `model.pt`, verification), the
    `head` on the device (`state_dict_softmax_fc`) and the `step` the loop calls (DDP student, teacher)."""

    student: nn.Module
    head: nn.Module
    step: DistillStep


def assemble(cfg: RunConfig, dist: distributed.DistInfo, head: Optional[nn.Module] = None) -> Models:
    """Student, head, teacher and DDP of `cfg` on `dist.device`, compiled in place when `cfg.compile`.
    `head` replaces the one `cfg.distill` selects (a benchmark's emulation; the teacher is loaded as for
    `cfg.distill`). With `teacher_cache` set the batches carry the teacher's rows and no teacher is loaded."""
    spec = head_spec(cfg.distill)
    student = get_model(cfg.network, dropout=0.0, fp16=cfg.fp16, num_features=cfg.embedding_size,
                        amp_dtype=cfg.amp_dtype).to(dist.device)
    if head is None:
        classifier = (load_teacher_classifier(cfg.teacher_classifier, cfg.num_classes, cfg.embedding_size)
                      if spec.teacher_classifier else None)
        margin_loss = build_margin(cfg.margin, cfg.margin_list, cfg.margin_grad, cfg.interclass_filtering_threshold,
                                   cfg.adaface_m, cfg.adaface_h, cfg.adaface_t_alpha)
        head = build_head(cfg.distill, HeadArgs(
            margin_loss, cfg.embedding_size, cfg.num_classes, sample_rate=cfg.sample_rate, seed=cfg.seed,
            alpha=cfg.distill_alpha, teacher_classifier=classifier, feature_kd_weight=cfg.feature_kd_weight))
    head = head.to(dist.device)
    teacher = None
    if spec.teacher_embeddings and cfg.teacher_cache is None:
        teacher = build_teacher(cfg.teacher_network, cfg.teacher_weights, cfg.embedding_size, dist.device,
                                dtype=cfg.teacher_dtype, channels_last=cfg.teacher_channels_last)
        probe = teacher(torch.zeros(2, 3, 112, 112, device=dist.device))
        check_embedding_sizes(probe.shape[1], cfg.embedding_size)
    step = DistillStep(wrap_ddp(student, dist), head, teacher)
    if cfg.compile:
        compile_step(step, cfg.compile_mode)  # in place: state_dict keys unchanged
    return Models(student, head, step)


def wrap_ddp(student: nn.Module, dist: distributed.DistInfo) -> nn.Module:
    """DDP over the student only, averaging gradients as usual (the heads' all-gather multiplies by
    W: distributed.py's gradient convention). BN buffers are not broadcast (host behaviour: rank
    0's statistics are the ones saved).
    """
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    # torch >= 2.13 renamed broadcast_buffers to forward_sync_buffers (deprecation warning otherwise)
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(student, device_ids=device_ids, bucket_cap_mb=16, **no_buffer_sync)
