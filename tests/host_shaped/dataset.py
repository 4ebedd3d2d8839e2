"""`get_dataloader` as the host's for a `.rec` folder: MXFaceDataset's keys and labels, a random flip,
(pixel/255 - 0.5)/0.5, the seeded DistributedSampler and a drop_last DataLoader. The records are
read here with the RecordIO layout the host describes, instead of through MXNet."""
import math
import os
import struct
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from torch import distributed

MAGIC = 0xCED7230A


class RecordFile:
    """train.idx offsets; a record's chunks joined (the writer dropped a magic word between two)."""

    def __init__(self, root):
        self.rec = os.path.join(root, "train.rec")
        with open(os.path.join(root, "train.idx")) as idx:
            self.offsets = dict(tuple(int(v) for v in line.split("\t")) for line in idx if line.strip())
        self.keys = list(self.offsets)

    def read(self, key):
        parts = []
        with open(self.rec, "rb") as rec:
            rec.seek(self.offsets[key])
            while True:
                magic, lrec = struct.unpack("<II", rec.read(8))
                assert magic == MAGIC, f"{self.rec}: bad magic at key {key}"
                cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
                parts.append(rec.read(length))
                rec.seek((-length) % 4, 1)
                if cflag in (0, 3):
                    return struct.pack("<I", MAGIC).join(parts)


def unpack(record):
    """(labels, payload): IRHeader 'IfQQ', then `flag` float32 labels when flag > 0."""
    flag, label = struct.unpack_from("<If", record)
    if flag == 0:
        return [label], record[24:]
    return list(struct.unpack_from(f"<{flag}f", record, 24)), record[24 + 4 * flag:]


class MXFaceDataset(torch.utils.data.Dataset):
    def __init__(self, root_dir):
        self.records = RecordFile(root_dir)
        record = self.records.read(0)
        if struct.unpack_from("<I", record)[0] > 0:  # InsightFace header: images are keys 1 .. label[0] - 1
            self.keys = list(range(1, int(unpack(record)[0][0])))
        else:
            self.keys = self.records.keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        labels, payload = unpack(self.records.read(self.keys[index]))
        image = np.asarray(Image.open(BytesIO(payload)).convert("RGB"))
        if torch.rand(1).item() < 0.5:
            image = image[:, ::-1]
        image = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
        return image, torch.tensor(int(labels[0]), dtype=torch.long)


class DistributedSampler(torch.utils.data.Sampler):
    """randperm seeded with epoch + seed, padded to ceil(N/W)*W, rank r takes r, r+W, ..."""

    def __init__(self, dataset, num_replicas, rank, seed):
        self.size, self.world, self.rank, self.seed, self.epoch = len(dataset), num_replicas, rank, seed, 0
        self.per_rank = math.ceil(self.size / num_replicas)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.epoch + self.seed)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[:self.per_rank * self.world - self.size]
        return iter(order[self.rank::self.world])

    def __len__(self):
        return self.per_rank


class _Loader(torch.utils.data.DataLoader):
    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)


def _seed_worker(seed):
    def init(worker_id):
        torch.manual_seed(seed + worker_id)
        np.random.seed(seed + worker_id)
    return init


def get_dataloader(root_dir, local_rank, batch_size, dali=False, dali_aug=False, seed=2048, num_workers=2,
                   num_classes=None):
    if root_dir == "synthetic":
        raise ValueError("this host-shaped loader reads a .rec folder; set rec (the tests pass --set rec=...)")
    dataset = MXFaceDataset(root_dir)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    sampler = DistributedSampler(dataset, world, rank, seed)
    return _Loader(dataset, batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                   worker_init_fn=_seed_worker(num_workers * rank + seed))
