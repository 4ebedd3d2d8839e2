"""`setup_seed`: one seed for torch, numpy, random and PYTHONHASHSEED."""
import os
import random

import numpy as np
import torch


def setup_seed(seed, cuda_deterministic=False):
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
