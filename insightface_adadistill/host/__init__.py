"""`host-train`: run a user's own arcface_torch `train_v2.py` with our heads registered into it.

arcface_torch has no plugin mechanism, so the bridge imports the checkout's `backbones` and
`partial_fc_v2` modules, swaps `get_model` and `PartialFC_V2` for versions that return the student
(plus a frozen-teacher feed) and our head, then executes the unchanged `train_v2.py`. See
docs/host-train.md for when to use it instead of `adadistill train`.
"""
from insightface_adadistill.host.checkout import HostCheckout, HostCheckoutError, check_checkout
from insightface_adadistill.host.config import HostRun, load_host_config
from insightface_adadistill.host.runner import run_host_training

__all__ = ["HostCheckout", "HostCheckoutError", "HostRun", "check_checkout", "load_host_config",
           "run_host_training"]
