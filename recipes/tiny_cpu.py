# A seconds-long CPU run used by the tests and `make demo`: 16 synthetic identities, 256 images,
# the tiny stand-in backbone, one epoch of 16 steps, no verification sets.
# `--set rec=path/to/folder` trains on a real (small) dataset instead.
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "tiny_mfn"
config.resume = False
config.output = None
config.embedding_size = 64
config.sample_rate = 1.0
config.fp16 = False
config.batch_size = 16
config.lr = 0.1
config.verbose = 10 ** 9  # no verification during the run
config.frequent = 4
config.num_workers = 0
config.device = "cpu"
config.dali = False

config.rec = "synthetic"
config.num_classes = 16
config.num_image = 256
config.num_epoch = 1
config.warmup_epoch = 0
config.val_targets = []
