"""`PartialFC_V2` as the host describes it: contiguous class shards, all-gathered embeddings whose
backward returns each rank W x its summed gradient (cancelling DDP's averaging), positives plus
random negatives when sample_rate < 1, fp32 cosine logits, the injected margin, and a softmax over
every rank's columns (delegated to our distributed cross-entropy, which computes the same thing)."""
import torch
import torch.nn.functional as F
from torch import distributed

from insightface_adadistill.heads import distributed_cross_entropy


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
        loss, _ = distributed_cross_entropy(logits, labels.view(-1))
        return loss
