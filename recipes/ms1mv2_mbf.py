# arcface_torch configs/ms1mv2_mbf.py: MobileFaceNet (mbf), ArcFace m 0.5, MS1MV2, 8 GPUs x 128.
# Published: IJB-C 93.61 / 90.28, LFW 99.72, CFP-FP 95.59, AgeDB-30 97.05.
# The zoo models were trained with power-2 poly decay and the exact ArcFace gradient;
# add `--set lr_power=2 margin_grad=exact` to train them that way.
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "mbf"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 1e-4
config.batch_size = 128
config.lr = 0.1
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/faces_emore"
config.num_classes = 85742
config.num_image = 5822653
config.num_epoch = 40
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
