"""`host-train`: run a user's own arcface_torch `train_v2.py` with our heads registered into it.

arcface_torch has no plugin mechanism, so `runner` swaps two names in the modules it imports. See
docs/host-train.md for when to use it instead of `adadistill train`.
"""
from insightface_adadistill.host.checkout import HostCheckout, HostCheckoutError, check_checkout
from insightface_adadistill.host.config import HostRun, load_host_config
from insightface_adadistill.host.runner import run_host_training

__all__ = ["HostCheckout", "HostCheckoutError", "HostRun", "check_checkout", "load_host_config",
           "run_host_training"]
