"""`get_dataloader`: our .rec loader behind the host's signature (plus num_classes, checked against the data)."""
from torch import distributed

from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.data.loader import build_dataloader


class _Batches:
    def __init__(self, loader):
        self.loader = loader

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            yield batch.image, batch.label


def get_dataloader(root_dir, local_rank, batch_size, dali=False, dali_aug=False, seed=2048, num_workers=2,
                   num_classes=None):
    if root_dir == "synthetic":
        raise ValueError("this host-shaped loader reads a .rec folder; set rec (the tests pass --set rec=...)")
    dataset = build_dataset(root_dir, num_classes, seed)
    loader = build_dataloader(dataset, batch_size, distributed.get_rank(), distributed.get_world_size(), seed,
                              num_workers, "cpu")
    return _Batches(loader)
