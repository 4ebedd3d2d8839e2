"""`get_model(name, **kwargs)` as the host's. The host's networks need a GPU to train in seconds, so
this checkout builds one small network of its own, `tiny_cnn`, with the host's keyword arguments."""
import torch
from torch import nn


class TinyCNN(nn.Module):
    """A 4x4 patch stem and one stride-2 convolution (BN + PReLU each), average pooling, a linear
    embedding and the BatchNorm1d `features` the host's networks end with."""

    def __init__(self, num_features=512, fp16=False, dropout=0.0):
        super().__init__()
        self.fp16 = fp16
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.PReLU(32))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(32, num_features)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=self.fp16):
            x = self.body(self.stem(x)).mean(dim=(2, 3))
        return self.features(self.fc(self.dropout(x.float())))


def get_model(name, **kwargs):
    if name != "tiny_cnn":
        raise ValueError(f"this host-shaped checkout only builds tiny_cnn, not {name}")
    return TinyCNN(**kwargs)
