# arcface_torch configs/ms1mv3_r50.py: iResNet50, ArcFace m 0.5, MS1MV3, 8 GPUs x 128.
# Published: IJB-C 96.37 / 94.47, LFW 99.83, CFP-FP 98.54, AgeDB-30 98.17. Teacher of
# recipes/ms1mv3_mbf_adadistill.py.
# The zoo models were trained with power-2 poly decay and the exact ArcFace gradient;
# add `--set lr_power=2 margin_grad=exact` to train them that way.
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "r50"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128
config.lr = 0.1
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/ms1m-retinaface-t1"
config.num_classes = 93431
config.num_image = 5179510
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
