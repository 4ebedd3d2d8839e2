"""`PolynomialLRWarmup`: linear warm-up, then polynomial decay to 0 at total_iters, per iteration."""
from torch.optim.lr_scheduler import LRScheduler


class PolynomialLRWarmup(LRScheduler):
    def __init__(self, optimizer, warmup_iters, total_iters=5, power=1.0, last_epoch=-1):
        self.warmup_iters, self.total_iters, self.power = warmup_iters, total_iters, power
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        k, w, t = self.last_epoch, max(self.warmup_iters, 0), self.total_iters
        if k == 0:
            factor = 1.0  # the host's first iteration runs at the full base LR
        elif k <= w:
            factor = k / w
        elif k <= t:
            factor = (1.0 - (k - w) / (t - w)) ** self.power
        else:
            factor = 0.0
        return [base * factor for base in self.base_lrs]
