# Scale-out (not in the paper): arcface_torch configs/glint360k_mbf.py with Partial FC
# sampling 0.2 (centres are sampled the same way for the distilled classifier) plus the
# distillation lines. Teacher: recipes/glint360k_r100_pfc02.py. Not measured; the standalone
# mbf baseline is IJB-C 95.04 / 92.62 (arcface_torch model zoo).
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "mbf"
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
config.distill = "adadistill"
config.teacher_network = "r100"
config.teacher_weights = "work_dirs/glint360k_r100_pfc02/model.pt"
config.teacher_dtype = "fp16"  # the teacher was trained under fp16 autocast too
config.dali = False

# ---- speed (docs/speed.md): the teacher already runs in half precision; on top of it
# config.compile = True                # torch.compile (compile_mode = "reduce-overhead": CUDA graphs)

config.rec = "/train_tmp/glint360k"
config.num_classes = 360232
config.num_image = 17091657
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
