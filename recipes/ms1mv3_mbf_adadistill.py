# Scale-out (not in the paper): arcface_torch configs/ms1mv3_mbf.py plus the distillation lines.
# Student mbf, teacher the iResNet50 of recipes/ms1mv3_r50.py. Not measured; the standalone
# mbf baseline is IJB-C 94.23 / 91.33 (arcface_torch model zoo).
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
config.distill = "adadistill"
config.teacher_network = "r50"
config.teacher_weights = "work_dirs/ms1mv3_r50/model.pt"
config.teacher_dtype = "fp16"  # the teacher was trained under fp16 autocast too
config.dali = False

# ---- speed (docs/speed.md): the teacher already runs in half precision; on top of it
# config.compile = True                # torch.compile (compile_mode = "reduce-overhead": CUDA graphs)

config.rec = "/train_tmp/ms1m-retinaface-t1"
config.num_classes = 93431
config.num_image = 5179510
config.num_epoch = 40
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
