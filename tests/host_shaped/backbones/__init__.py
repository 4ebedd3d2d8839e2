"""`get_model(name, **kwargs)` as the host's, delegating to our tiny stand-in backbones."""
from insightface_adadistill.backbones import get_model as _tiny_model


def get_model(name, **kwargs):
    if not name.startswith("tiny_"):
        raise ValueError(f"this host-shaped checkout only builds tiny_* networks, not {name}")
    return _tiny_model(name, **kwargs)
