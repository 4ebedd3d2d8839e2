# arcface_torch configs/glint360k_r100.py with Partial FC sampling 0.2: iResNet100, CosFace
# m 0.4, Glint360K, 8 GPUs x 128. Published with sample_rate 1.0: IJB-C 97.55 / 96.38 (zoo);
# the partial_fc README reports IFRT 88.67 at r = 1.0 and 88.23 at r = 0.1, so 0.2 is expected
# within a few tenths. Teacher of recipes/glint360k_mbf_adadistill_pfc02.py.
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "r100"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 0.2
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 1e-4
config.batch_size = 128
config.lr = 0.1
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/glint360k"
config.num_classes = 360232
config.num_image = 17091657
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
