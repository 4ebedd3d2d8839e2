"""The host's training loop, shape for shape, on CPU with gloo (see README.md for the deviations)."""
import argparse
import logging
import os
import socket

import torch
from torch import distributed
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
from torch.utils.tensorboard import SummaryWriter

from backbones import get_model
from dataset import get_dataloader
from losses import CombinedMarginLoss
from lr_scheduler import PolynomialLRWarmup
from partial_fc_v2 import PartialFC_V2
from utils.utils_callbacks import CallBackLogging
from utils.utils_config import get_config
from utils.utils_distributed_sampler import setup_seed
from utils.utils_logging import AverageMeter, init_logging

# The process group is created at import time, as the host does (gloo here instead of nccl).
try:
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    distributed.init_process_group("gloo")
except KeyError:
    rank, local_rank, world_size = 0, 0, 1
    with socket.socket() as _probe:
        _probe.bind(("127.0.0.1", 0))
        _port = _probe.getsockname()[1]
    distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_port}", rank=0, world_size=1)


def main(args):
    cfg = get_config(args.config)
    setup_seed(seed=cfg.seed, cuda_deterministic=False)
    os.makedirs(cfg.output, exist_ok=True)
    init_logging(rank, cfg.output)
    summary_writer = SummaryWriter(log_dir=os.path.join(cfg.output, "tensorboard")) if rank == 0 else None

    train_loader = get_dataloader(cfg.rec, local_rank, cfg.batch_size, cfg.dali, cfg.dali_aug, cfg.seed,
                                  cfg.num_workers, num_classes=cfg.num_classes)
    backbone = get_model(cfg.network, dropout=0.0, fp16=cfg.fp16, num_features=cfg.embedding_size).to("cpu")
    backbone = torch.nn.parallel.DistributedDataParallel(
        module=backbone, broadcast_buffers=False, bucket_cap_mb=16, find_unused_parameters=True)
    if os.environ.get("HOST_SHAPED_COMM_HOOK") != "none":
        backbone.register_comm_hook(None, fp16_compress_hook)
    backbone.train()
    backbone._set_static_graph()

    margin_loss = CombinedMarginLoss(64, cfg.margin_list[0], cfg.margin_list[1], cfg.margin_list[2],
                                     cfg.interclass_filtering_threshold)
    module_partial_fc = PartialFC_V2(margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate, False)
    module_partial_fc.train().to("cpu")
    logging.info("head: %s" % type(module_partial_fc).__name__)
    groups = [{"params": backbone.parameters()}, {"params": module_partial_fc.parameters()}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params=groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params=groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError("unknown optimizer")

    cfg.total_batch_size = cfg.batch_size * world_size
    cfg.warmup_step = cfg.num_image // cfg.total_batch_size * cfg.warmup_epoch
    cfg.total_step = cfg.num_image // cfg.total_batch_size * cfg.num_epoch
    lr_scheduler = PolynomialLRWarmup(opt, warmup_iters=cfg.warmup_step, total_iters=cfg.total_step)

    start_epoch, global_step = 0, 0
    if cfg.resume:
        saved = torch.load(os.path.join(cfg.output, f"checkpoint_gpu_{rank}.pt"))
        start_epoch, global_step = saved["epoch"], saved["global_step"]
        backbone.module.load_state_dict(saved["state_dict_backbone"])
        module_partial_fc.load_state_dict(saved["state_dict_softmax_fc"])
        opt.load_state_dict(saved["state_optimizer"])
        lr_scheduler.load_state_dict(saved["state_lr_scheduler"])

    for key, value in cfg.items():
        logging.info(": " + key + " " * (25 - len(key)) + str(value))

    callback_logging = CallBackLogging(cfg.frequent, cfg.total_step, cfg.batch_size, global_step, summary_writer)
    loss_am = AverageMeter()
    amp = torch.amp.GradScaler("cpu", growth_interval=100, enabled=cfg.fp16)

    for epoch in range(start_epoch, cfg.num_epoch):
        train_loader.set_epoch(epoch)
        for img, local_labels in train_loader:
            global_step += 1
            local_embeddings = backbone(img)
            loss = module_partial_fc(local_embeddings, local_labels)
            if cfg.fp16:
                amp.scale(loss).backward()
                if global_step % cfg.gradient_acc == 0:
                    amp.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
                    amp.step(opt)
                    amp.update()
                    opt.zero_grad()
            else:
                loss.backward()
                if global_step % cfg.gradient_acc == 0:
                    torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
                    opt.step()
                    opt.zero_grad()
            lr_scheduler.step()
            with torch.no_grad():
                loss_am.update(loss.item(), 1)
                callback_logging(global_step, loss_am, epoch, cfg.fp16, lr_scheduler.get_last_lr()[0], amp)

        if cfg.save_all_states:
            checkpoint = {"epoch": epoch + 1, "global_step": global_step,
                          "state_dict_backbone": backbone.module.state_dict(),
                          "state_dict_softmax_fc": module_partial_fc.state_dict(),
                          "state_optimizer": opt.state_dict(), "state_lr_scheduler": lr_scheduler.state_dict()}
            torch.save(checkpoint, os.path.join(cfg.output, f"checkpoint_gpu_{rank}.pt"))
        if rank == 0:
            torch.save(backbone.module.state_dict(), os.path.join(cfg.output, "model.pt"))

    if rank == 0:
        torch.save(backbone.module.state_dict(), os.path.join(cfg.output, "model.pt"))
    if summary_writer is not None:
        summary_writer.close()


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    parser = argparse.ArgumentParser(description="Distributed Arcface Training in Pytorch")
    parser.add_argument("config", type=str, help="py config file")
    main(parser.parse_args())
