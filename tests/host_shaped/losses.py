"""`CombinedMarginLoss` as the host describes it: labels (N, 1), -1 where the class is elsewhere."""
import torch


class CombinedMarginLoss(torch.nn.Module):
    def __init__(self, s, m1, m2, m3, interclass_filtering_threshold=0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold

    def forward(self, logits, labels):
        positive = torch.where(labels != -1)[0]
        if self.interclass_filtering_threshold > 0:
            with torch.no_grad():
                dirty = (logits > self.interclass_filtering_threshold).float()
                keep_own = torch.ones([positive.size(0), logits.size(1)], device=logits.device)
                keep_own.scatter_(1, labels[positive], 0)  # a positive row's own target stays
                dirty[positive] *= keep_own
                clean = 1 - dirty
            logits = logits * clean
        columns = labels[positive].view(-1)
        target = logits[positive, columns]
        if self.m1 == 1.0 and self.m3 == 0.0:
            with torch.no_grad():  # in place, so autograd sees the identity: straight-through gradient
                target.arccos_()
                logits.arccos_()
                logits[positive, columns] = target + self.m2
                logits.cos_()
            return logits * self.s
        if self.m3 > 0:
            logits[positive, columns] = target - self.m3
            return logits * self.s
        raise ValueError("unsupported margin combination")
