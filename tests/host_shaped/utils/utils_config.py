"""`get_config('configs/<name>')`: configs.base's config, updated with configs.<name>'s."""
import importlib
import os.path as osp


def get_config(config_file):
    assert config_file.startswith("configs/"), "the config must be given as configs/<name>"
    name = osp.splitext(osp.basename(config_file))[0]
    cfg = importlib.import_module("configs.base").config
    cfg.update(importlib.import_module("configs." + name).config)
    if cfg.output is None:
        cfg.output = osp.join("work_dirs", name)
    return cfg
