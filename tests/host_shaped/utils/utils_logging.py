"""Rank 0 logs to <output>/training.log and stdout with the `Training: ` prefix; others stay silent."""
import logging
import os
import sys


class AverageMeter:
    def __init__(self):
        self.reset()

    def reset(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def init_logging(rank, models_root):
    if rank != 0:
        return
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    formatter = logging.Formatter("Training: %(asctime)s-%(message)s")
    for handler in (logging.FileHandler(os.path.join(models_root, "training.log")),
                    logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.info("rank_id: %d" % rank)
