# arcface_torch configs/wf42m_pfc03_40epoch_8gpu_vit_b.py: vit_b_dp005_mask_005, CosFace 0.4, WebFace42M,
# Partial FC 0.3, AdamW (lr 0.001, weight decay 0.1), 40 epochs with 4 warm-up epochs, 8 GPUs.
# Published (arcface_torch README, model zoo): IJB-C 97.91 / 97.05 (zoo row ViT-B-11G, WF42M-PFC-0.3).
# A ViT is also a teacher: --set teacher_network=vit_b_dp005_mask_005 teacher_weights=work_dirs/<this run>/model.pt
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "vit_b_dp005_mask_005"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 0.3
config.fp16 = True
config.weight_decay = 0.1
config.batch_size = 256
config.gradient_acc = 12  # total batch 8 x 256 x 12, as the host
config.optimizer = "adamw"
config.lr = 0.001
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/WebFace42M"
config.num_classes = 2059906
config.num_image = 42474557
config.num_epoch = 40
config.warmup_epoch = 4
config.val_targets = []
