"""A seconds-long job: 16 synthetic identities, 256 images, the tiny stand-in backbone."""
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "tiny_cnn"
config.resume = False
config.output = None
config.embedding_size = 64
config.sample_rate = 1.0
config.fp16 = False
config.batch_size = 16
config.lr = 0.1
config.verbose = 10 ** 9
config.frequent = 1
config.num_workers = 0
config.save_all_states = True

config.rec = "synthetic"  # the tests point rec at a small .rec folder with --set rec=...
config.num_classes = 16
config.num_image = 128
config.num_epoch = 1
config.warmup_epoch = 0
config.val_targets = []
