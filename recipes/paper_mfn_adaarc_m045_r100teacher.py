# AdaDistill (ECCV 2024), published results table, row "teachers": ResNet100
# teacher IJB-C 96.39 / 94.58 -> student 92.54 / 87.48. AdaArcDistill alpha', m 0.45, with the r100
# teacher of recipes/paper_teacher_r100.py.
from easydict import EasyDict as edict

config = edict()
# ---- what this row sets
config.network = "mfn"
config.margin_list = (1.0, 0.45, 0.0)
config.distill = "adadistill"
config.distill_alpha = "weighted"
config.teacher_network = "r100"
config.teacher_weights = "work_dirs/paper_teacher_r100/model.pt"

# ---- the paper's training setup (recipes/README.md); tests/test_recipes.py checks that
# ---- every paper_* recipe repeats it
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
config.margin_grad = "exact"  # the paper's code used the true ArcFace derivative
config.frequent = 50
config.dali = False

# ---- speed (docs/speed.md): this recipe keeps the paper's fp32 precision; the fast preset is
# config.teacher_dtype = "bf16"        # teacher forward in bf16 autocast ("fp16" on pre-Ampere GPUs)
# config.teacher_channels_last = True
# config.fp16 = True; config.amp_dtype = "bf16"   # student autocast
# config.compile = True                # torch.compile (compile_mode = "reduce-overhead": CUDA graphs)

config.rec = "/train_tmp/faces_emore"
config.num_classes = 85742
config.num_image = 5822653
config.num_epoch = 26
config.val_targets = ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"]
config.verbose = config.num_image // (config.batch_size * 4) // 2  # half an epoch on 4 GPUs: 5686
