# AdaDistill (ECCV 2024), published results table, row "MFN + ArcDistill" (Eq. 4):
# LFW 99.63, CFP-FP 93.83, AgeDB-30 96.82, IJB-C 91.70 / 84.57. The student trains against the
# teacher's frozen classifier, read from the Partial FC shards that recipes/paper_teacher_r50.py
# saves (save_all_states = True there).
from easydict import EasyDict as edict

config = edict()
# ---- what this row sets
config.network = "mfn"
config.margin_list = (1.0, 0.45, 0.0)
config.distill = "arcdistill"
config.teacher_network = "r50"
config.teacher_weights = "work_dirs/paper_teacher_r50/model.pt"
config.teacher_classifier = "work_dirs/paper_teacher_r50/checkpoint_gpu_*.pt"

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
# config.fp16 = True; config.amp_dtype = "bf16"   # student autocast (arcdistill runs no teacher forward)
# config.compile = True                # torch.compile (compile_mode = "reduce-overhead": CUDA graphs)

config.rec = "/train_tmp/faces_emore"
config.num_classes = 85742
config.num_image = 5822653
config.num_epoch = 26
config.val_targets = ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"]
config.verbose = config.num_image // (config.batch_size * 4) // 2  # half an epoch on 4 GPUs: 5686
