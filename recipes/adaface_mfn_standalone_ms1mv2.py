# MobileFaceNet trained alone on MS1MV2 with the AdaFace margin (Kim, Jain, Liu, CVPR 2022): the
# baseline of the adaface_mfn_adadistill_*_ms1mv2 rows, as paper_mfn_standalone is of the paper's.
# Not in a paper; not measured here.
from easydict import EasyDict as edict

config = edict()
# ---- what this row sets
config.network = "mfn"
config.margin = "adaface"  # AdaFace (CVPR 2022): m 0.4, h 0.333, t_alpha 0.01, s 64 (docs/heads.md)
config.adaface_m = 0.4
config.adaface_h = 0.333
config.adaface_t_alpha = 0.01
config.distill = None

# ---- the AdaDistill paper's student setup (recipes/README.md), kept for every adaface_* recipe so
# ---- that it compares with the paper_* rows; tests/test_recipes.py checks it
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = False
config.optimizer = "sgd"
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128
config.lr = 0.1
config.lr_scale_batch = 512  # lr 0.1 at 4 GPUs x 128; other GPU counts scale it linearly
config.lr_schedule = "step"
config.lr_steps = [8, 14, 20, 25]  # lr / 10 at the start of these (1-based) epochs
config.warmup_epoch = 0
config.clip_grad_norm = 5.0
config.frequent = 50
config.dali = False

config.rec = "/train_tmp/faces_emore"
config.num_classes = 85742
config.num_image = 5822653
config.num_epoch = 26
config.val_targets = ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"]
config.verbose = config.num_image // (config.batch_size * 4) // 2  # half an epoch on 4 GPUs: 5686
