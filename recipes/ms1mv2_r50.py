# arcface_torch configs/ms1mv2_r50.py: iResNet50, ArcFace m 0.5, MS1MV2, 8 GPUs x 128.
# Published (arcface_torch model zoo and training logs): IJB-C 95.97 / 94.07, LFW 99.78, CFP-FP 97.94,
# AgeDB-30 98.25. Also a teacher for the distillation recipes.
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

config.rec = "/train_tmp/faces_emore"
config.num_classes = 85742
config.num_image = 5822653
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
