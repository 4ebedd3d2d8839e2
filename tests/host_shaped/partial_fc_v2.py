"""`PartialFC_V2` as the host describes it: contiguous class shards, all-gathered embeddings whose
backward returns each rank W x its summed gradient (cancelling DDP's averaging), positives plus
random negatives when sample_rate < 1, fp32 cosine logits, the injected margin, and a softmax over
every rank's columns (`DistCrossEntropy`: max and sum all-reduced, -mean log p of the target)."""
import torch
import torch.nn.functional as F
from torch import distributed


class _GatherToOwners(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local):
        chunks = [torch.empty_like(local) for _ in range(distributed.get_world_size())]
        distributed.all_gather(chunks, local.contiguous())
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        distributed.all_reduce(grad)  # every rank's contribution to every chunk
        world = distributed.get_world_size()
        return grad.chunk(world)[distributed.get_rank()] * world


class _DistCrossEntropy(torch.autograd.Function):
    """Softmax over the columns of every rank; labels (N, 1) hold the local column or -1."""

    @staticmethod
    def forward(ctx, logits, labels):
        row_max = logits.max(dim=1, keepdim=True)[0]
        distributed.all_reduce(row_max, distributed.ReduceOp.MAX)
        prob = (logits - row_max).exp()
        row_sum = prob.sum(dim=1, keepdim=True)
        distributed.all_reduce(row_sum)
        prob = prob / row_sum
        here = torch.where(labels.view(-1) != -1)[0]
        target = torch.zeros(logits.size(0), 1, device=logits.device)
        target[here] = prob[here].gather(1, labels[here])
        distributed.all_reduce(target)
        ctx.save_for_backward(prob, here, labels)
        return -target.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx, grad):
        prob, here, labels = ctx.saved_tensors
        one_hot = torch.zeros_like(prob)
        one_hot[here] = one_hot[here].scatter(1, labels[here], 1.0)
        return (prob - one_hot) / prob.size(0) * grad.item(), None


class PartialFC_V2(torch.nn.Module):
    def __init__(self, margin_loss, embedding_size, num_classes, sample_rate=1.0, fp16=False):
        super().__init__()
        assert distributed.is_initialized(), "the process group must exist first"
        if not callable(margin_loss):
            raise ValueError("margin_loss must be callable")
        rank, world = distributed.get_rank(), distributed.get_world_size()
        base, extra = divmod(num_classes, world)
        self.num_local = base + int(rank < extra)
        self.class_start = base * rank + min(rank, extra)
        self.num_sample = int(sample_rate * self.num_local)
        self.sample_rate, self.fp16, self.embedding_size = sample_rate, fp16, embedding_size
        self.margin_softmax = margin_loss
        self.last_batch_size = 0
        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (self.num_local, embedding_size)))

    def sample(self, labels):
        with torch.no_grad():
            positive = torch.unique(labels[labels != -1], sorted=True)
            if self.num_sample >= positive.numel():
                score = torch.rand(self.num_local).to(labels.device)
                score[positive] = 2.0
                index = torch.sort(torch.topk(score, self.num_sample)[1])[0]
            else:
                index = positive
            owned = labels != -1
            labels[owned] = torch.searchsorted(index, labels[owned])
        return self.weight[index]

    def forward(self, local_embeddings, local_labels):
        local_labels = local_labels.reshape(-1).long()
        batch = local_embeddings.size(0)
        self.last_batch_size = self.last_batch_size or batch
        assert batch == self.last_batch_size, "every step and rank needs the same batch size"
        embeddings = _GatherToOwners.apply(local_embeddings)
        gathered = [torch.zeros_like(local_labels) for _ in range(distributed.get_world_size())]
        distributed.all_gather(gathered, local_labels)
        labels = torch.cat(gathered).view(-1, 1)
        mine = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        labels = torch.where(mine, labels - self.class_start, torch.full_like(labels, -1))
        weight = self.sample(labels) if self.sample_rate < 1 else self.weight
        cos = F.linear(F.normalize(embeddings), F.normalize(weight)).float().clamp(-1, 1)
        logits = self.margin_softmax(cos, labels)
        return _DistCrossEntropy.apply(logits, labels)
