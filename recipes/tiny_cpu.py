# A seconds-long CPU smoke run for the tests and quick checks (`make demo` uses its own presets).
# rec = "synthetic" is arcface_torch's speed-test data: one fixed random image whose label cycles
# through num_classes = 16 ids, so there is nothing to learn. It has no image count of its own:
# num_image = 256 sets the run's length, one epoch of 16 steps of 16 images. The tiny stand-in
# backbone, no verification sets.
# `--set rec=path/to/folder num_classes=C num_image=N` trains on a real (small) dataset instead.
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
