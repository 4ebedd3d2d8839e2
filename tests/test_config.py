"""Config loading, `--set` overrides, validation and the host's start-up log format."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from insightface_adadistill.commands.config import main as config_main
from insightface_adadistill.config import (KEYS, ConfigError, RunConfig, build_run_config, derive, format_config,
                                           load_config, parse_overrides, resolve_config_path, validate)
from insightface_adadistill.config import defaults
from insightface_adadistill.config.table import DOCS_PAGE, config_table_markdown, render_docs_page

# The keys arcface_torch's configs/ms1mv3_r50.py sets, as a user's file would.
MS1MV3_R50 = '''from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "r50"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128
config.lr = 0.1
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/ms1m-retinaface-t1"
config.num_classes = 93431
config.num_image = 5179510
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ['lfw', 'cfp_fp', "agedb_30"]
'''


def write_config(folder: Path, text: str = MS1MV3_R50, name: str = "ms1mv3_r50.py",
                 **changes) -> Path:
    """The ms1mv3_r50 file with `changes` appended as `config.key = value` lines."""
    path = folder / name
    path.write_text(text + "".join(f"config.{k} = {v!r}\n" for k, v in changes.items()))
    return path


def problems_of(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ---- loading -------------------------------------------------------------------------------

def test_host_file_from_anywhere_merges_over_base_and_derives_8_gpus(tmp_path):
    cfg = load_config(write_config(tmp_path), world_size=8)
    assert cfg.network == "r50" and cfg.fp16 is True and cfg.rec == "/train_tmp/ms1m-retinaface-t1"
    assert cfg.momentum == 0.9 and cfg.gradient_acc == 1 and cfg.seed == 2048  # from the base
    assert cfg.distill is None and cfg.lr_schedule == "poly"  # our extension defaults
    assert cfg.output == "work_dirs/ms1mv3_r50"
    assert (cfg.total_batch_size, cfg.warmup_step, cfg.total_step) == (1024, 0, 101160)
    assert 5179510 // 1024 == 5058  # iterations per epoch in the published log


def test_key_order_is_base_then_extensions_then_file_then_derived(tmp_path):
    keys = list(load_config(write_config(tmp_path)).as_dict())
    assert keys[:3] == ["margin_list", "network", "resume"]
    assert keys.index("wandb_resume") < keys.index("distill") < keys.index("rec")
    assert keys[-3:] == ["total_batch_size", "warmup_step", "total_step"]


def test_explicit_output_is_kept(tmp_path):
    assert load_config(write_config(tmp_path, output="runs/a")).output == "runs/a"


def test_derive_is_pure_and_matches_published_step_counts():
    cfg = {"batch_size": 128, "num_image": 5822653, "num_epoch": 20, "warmup_epoch": 2,
           "output": None}
    before = copy.deepcopy(cfg)
    assert derive(cfg, 8, "ms1mv2_r50") == {"output": "work_dirs/ms1mv2_r50", "total_batch_size": 1024,
                                            "warmup_step": 11372, "total_step": 113720}
    assert cfg == before
    assert derive({**cfg, "num_epoch": 40}, 8, "x")["total_step"] == 227440  # ms1mv2_mbf
    assert derive({**cfg, "warmup_epoch": -1}, 8, "x")["warmup_step"] == -5686  # 3millions-style
    assert derive({**cfg, "output": "runs/a"}, 8, "x")["output"] == "runs/a"


def test_derive_refuses_an_epoch_without_steps():
    with pytest.raises(ConfigError, match="num_image = 100 is smaller than one global batch"):
        derive({"batch_size": 64, "num_image": 100, "num_epoch": 1, "warmup_epoch": 0}, 2, "x")


def test_host_style_path_without_py_and_recipe_name(tmp_path):
    path = write_config(tmp_path)
    assert resolve_config_path(tmp_path / "ms1mv3_r50") == path
    assert resolve_config_path("tiny_cpu").name == "tiny_cpu.py"
    assert resolve_config_path("tiny_cpu").parent.name == "recipes"


def test_missing_file_suggests_recipes():
    with pytest.raises(ConfigError, match="Did you mean .*tiny_cpu"):
        resolve_config_path("tiny_cp")


def test_loading_does_not_touch_the_declared_defaults(tmp_path):
    snapshot = copy.deepcopy(defaults.DEFAULTS)
    cfg = load_config(write_config(tmp_path), ["lr_steps=[3]"])
    cfg.lr_steps.append(9)
    assert load_config(write_config(tmp_path)).lr_steps == []
    assert defaults.DEFAULTS == snapshot
    assert KEYS["lr_steps"].default == [] and RunConfig.__dataclass_fields__["lr_steps"].default_factory() == []


def test_file_without_config_or_importing_configs_base(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must build an EasyDict named `config`"):
        load_config(empty)
    based = tmp_path / "based.py"
    based.write_text("from configs.base import config\nconfig.network = 'r100'\n")
    with pytest.raises(ConfigError, match="imports 'configs'.*remove that import"):
        load_config(based)


def test_file_that_raises_is_named(tmp_path):
    path = write_config(tmp_path, name="broken.py", text=MS1MV3_R50 + "config.lr = 1 / 0\n")
    with pytest.raises(ConfigError, match="(?s)broken.py.*ZeroDivisionError"):
        load_config(path)


def test_derived_key_in_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="total_step is computed by the trainer"):
        load_config(write_config(tmp_path, total_step=5))


# ---- overrides ------------------------------------------------------------------------------

@pytest.mark.parametrize("item, key, expected", [
    ("lr=0.05", "lr", 0.05),
    ("batch_size=64", "batch_size", 64),
    ("sample_rate=1", "sample_rate", 1.0),  # int -> float key
    ("fp16=false", "fp16", False),
    ("fp16=1", "fp16", True),
    ("fp16=True", "fp16", True),
    ("resume=no", "resume", False),
    ("network=r100", "network", "r100"),
    ("network='r100'", "network", "r100"),
    ("wandb_key=123", "wandb_key", "123"),  # pure string keys keep the text
    ("rec=/data/faces emore", "rec", "/data/faces emore"),
    ("teacher_weights=None", "teacher_weights", None),
    ("teacher_weights=work_dirs/r50/model.pt", "teacher_weights", "work_dirs/r50/model.pt"),
    ("val_targets=lfw,cfp_fp", "val_targets", ["lfw", "cfp_fp"]),
    ("val_targets=lfw", "val_targets", ["lfw"]),
    ("val_targets=[]", "val_targets", []),
    ("lr_steps=[8, 14]", "lr_steps", [8, 14]),
    ("lr_steps=8,14,20", "lr_steps", [8, 14, 20]),
    ("margin_list=(1.0,0.0,0.35)", "margin_list", [1.0, 0.0, 0.35]),
    ("distill_alpha=0.9", "distill_alpha", 0.9),
    ("distill_alpha=plain", "distill_alpha", "plain"),
    ("progress_bar=false", "progress_bar", False),
    ("progress_bar=auto", "progress_bar", "auto"),
    ("lr_scale_batch=512", "lr_scale_batch", 512),
    ("teacher_classifier=w/checkpoint_gpu_*.pt", "teacher_classifier", "w/checkpoint_gpu_*.pt"),
])
def test_set_values_are_typed_by_the_key(item, key, expected):
    value = parse_overrides([item])[key]
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_after_the_file_and_before_output(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path, ["lr=0.02", "batch_size=64", "output=None"], world_size=1)
    assert (cfg.lr, cfg.batch_size, cfg.output) == (0.02, 64, "work_dirs/ms1mv3_r50")
    assert cfg.total_step == 5179510 // 64 * 20
    assert load_config(path, {"lr": 1, "val_targets": ("lfw",)}).lr == 1.0
    assert load_config(path, {"val_targets": ("lfw",)}).val_targets == ["lfw"]


def test_bad_overrides_name_the_problem(tmp_path):
    path = write_config(tmp_path)
    with pytest.raises(ConfigError, match="'lr0.1' is not key=value"):
        load_config(path, ["lr0.1"])
    with pytest.raises(ConfigError, match="--set sampel_rate: unknown key .*'sample_rate'"):
        load_config(path, ["sampel_rate=0.2"])
    with pytest.raises(ConfigError, match="total_step is computed by the trainer"):
        load_config(path, ["total_step=10"])
    with pytest.raises(ConfigError, match=r"lr = -0.1 must be > 0 \(from --set lr=...\)"):
        load_config(path, ["lr=-0.1"])
    with pytest.raises(ConfigError, match="batch_size = 1.5 has type float; expected int"):
        load_config(path, ["batch_size=1.5"])


# ---- validation -----------------------------------------------------------------------------

def load_with(tmp_path, **changes):
    return load_config(write_config(tmp_path, **changes))


@pytest.mark.parametrize("changes, message", [
    ({"sampel_rate": 0.2}, "unknown key 'sampel_rate'. Did you mean 'sample_rate'?"),
    ({"loss": "arcface"}, "'loss' is a pre-2022 arcface_torch key"),
    ({"batch_size": "128"}, "batch_size = '128' has type str; expected int"),
    ({"lr": "0.1"}, r"lr = '0.1' has type str; expected float \(or int\)"),
    ({"fp16": 1}, "fp16 = 1 has type int; expected bool"),
    ({"val_targets": "lfw"}, r"val_targets = 'lfw' has type str; expected list \(or tuple\)"),
    ({"lr": -0.1}, "lr = -0.1 must be > 0"),
    ({"lr": 0}, "lr = 0 must be > 0"),
    ({"sample_rate": 1.5}, r"sample_rate = 1.5 must be in \[0, 1\]"),
    ({"sample_rate": -0.1}, r"sample_rate = -0.1 must be in \[0, 1\]"),
    ({"margin_list": (1.0, 0.5)}, r"margin_list = \(1.0, 0.5\) must be 3 numbers"),
    ({"margin_list": (1.0, 0.5, 0.4)}, "is neither ArcFace .* nor CosFace"),
    ({"margin_list": (0.9, 0.4, 0.0)}, "is neither ArcFace"),
    ({"margin_list": (1.0, "a", 0.0)}, "must be 3 numbers"),
    ({"batch_size": 0}, "batch_size = 0 must be >= 1"),
    ({"gradient_acc": 0}, "gradient_acc = 0 must be >= 1"),
    ({"optimizer": "adam"}, "optimizer = 'adam' must be one of 'sgd', 'adamw'"),
    ({"using_wandb": True}, "wandb is not supported.*set using_wandb = False"),
    ({"distill": "kd"}, "distill = 'kd' must be one of None, 'adadistill'"),
    ({"distill": "adadistill"}, "needs a teacher: set teacher_network"),
    ({"distill": "arcdistill", "teacher_network": "r50", "teacher_weights": "t.pt"},
     "set teacher_classifier"),
    ({"distill_alpha": 1.0},
     r"distill_alpha = 1.0 must be 'weighted', 'plain' or a float in \(0, 1\)"),
    ({"distill_alpha": "alpha"}, "distill_alpha = 'alpha' must be"),
    ({"teacher_dtype": "float16"},
     "teacher_dtype = 'float16' must be one of 'fp32', 'fp16', 'bf16'"),
    ({"amp_dtype": "fp32"}, "amp_dtype = 'fp32' must be one of 'fp16', 'bf16'"),
    ({"lr_schedule": "cosine"}, "lr_schedule = 'cosine' must be one of 'poly', 'step'"),
    ({"lr_schedule": "step"}, "lr_schedule = 'step' needs lr_steps"),
    ({"warmup_epoch": 20}, "warmup_epoch = 20 must be < num_epoch = 20"),
    ({"lr_steps": [8, 0]}, "lr_steps = .* must be increasing 1-based epoch numbers"),
    ({"lr_steps": [14, 8]}, "must be increasing"),
    ({"lr_steps": ["8"]}, "must be increasing"),
    ({"margin_grad": "exactly"},
     "margin_grad = 'exactly' must be one of 'straight_through', 'exact'"),
    ({"nonfinite_loss": "ignore"}, "nonfinite_loss = 'ignore' must be one of 'stop', 'skip'"),
    ({"val_targets": ["lfw", 3]}, "val_targets = .* must be a list of .bin basenames"),
    ({"teacher_classifier": []}, "teacher_classifier = .* must be a non-empty list of file paths"),
    ({"teacher_classifier": ""}, "teacher_classifier = '' must be a non-empty list"),
])
def test_each_problem_names_file_key_value_and_fix(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        load_with(tmp_path, **changes)
    assert str(tmp_path / "ms1mv3_r50.py") in problems_of(excinfo)


def test_missing_required_keys_are_listed_with_their_meaning(tmp_path):
    text = "\n".join(line for line in MS1MV3_R50.splitlines()
                     if not line.startswith(("config.num_classes", "config.val_targets")))
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, text=text + "\n"))
    message = problems_of(excinfo)
    assert "2 problems" in message
    assert "missing required key 'num_classes': number of identities" in message
    assert "missing required key 'val_targets': list of .bin basenames" in message


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_with(tmp_path, lr=-1.0, optimizer="adam", using_wandb=True)
    assert len(excinfo.value.problems) == 3


@pytest.mark.parametrize("changes", [
    {"sample_rate": 0},  # host's positives-only Partial FC
    {"sample_rate": 0.2, "margin_list": (1.0, 0.0, 0.4)},
    {"distill": "adadistill", "teacher_network": "r50", "teacher_weights": "m.pt",
     "distill_alpha": 0.99},
    {"distill": "arcdistill", "teacher_network": "r50", "teacher_weights": "m.pt",
     "teacher_classifier": ["a/checkpoint_gpu_0.pt", "a/checkpoint_gpu_1.pt"]},
    {"lr_schedule": "step", "lr_steps": (8, 14, 20, 25), "warmup_epoch": -1},
    {"teacher_weights": "ignored.pt"},  # teacher keys without distill are inert
    {"margin_list": [1.0, 0.0, 0.0], "progress_bar": True, "lr_scale_batch": 512},
])
def test_valid_variants_pass(tmp_path, changes):
    cfg = load_with(tmp_path, **changes)
    kept = {key: getattr(cfg, key) for key in changes}
    assert kept == changes  # values are kept as written (a tuple stays a tuple)


def test_validate_accepts_a_loaded_config_with_derived_keys(tmp_path):
    cfg = load_config(write_config(tmp_path), world_size=8)
    steps_per_epoch = 5179510 // (128 * 8)
    assert (cfg.total_batch_size, cfg.warmup_step, cfg.total_step) == (1024, 0, steps_per_epoch * 20)
    assert validate(cfg) is None
    with pytest.raises(ConfigError, match="lr = -1.0 must be"):  # still checked beside the derived keys
        validate({**cfg.as_dict(), "lr": -1.0})
    assert validate(cfg.as_dict()) is None
    with pytest.raises(ConfigError, match="lr = -1 must be > 0"):
        validate(dataclasses.replace(cfg, lr=-1))


# ---- the typed run config ---------------------------------------------------------------------

def test_load_config_returns_a_frozen_typed_run_config(tmp_path):
    cfg = load_config(write_config(tmp_path), world_size=8)
    assert isinstance(cfg, RunConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.5
    with pytest.raises(TypeError):
        cfg["lr"]  # attribute access only: the EasyDict stays in the file
    assert [f.name for f in dataclasses.fields(RunConfig)] == list(KEYS) == list(cfg.as_dict())
    assert cfg.as_dict()["total_step"] == cfg.total_step == 101160


def test_build_run_config_from_keys_without_a_file():
    keys = {"rec": "synthetic", "num_classes": 16, "num_image": 256, "num_epoch": 1,
            "warmup_epoch": 0, "val_targets": [], "network": "tiny_mfn", "batch_size": 16,
            "output": None}
    cfg = build_run_config(keys, world_size=2, config_name="tiny")
    assert (cfg.output, cfg.total_batch_size, cfg.total_step) == ("work_dirs/tiny", 32, 8)
    assert keys["output"] is None  # derived into the run config, never written back
    assert build_run_config({**keys, "output": "runs/a"}).output == "runs/a"
    with pytest.raises(ConfigError, match="total_step is computed by the trainer"):
        build_run_config({**keys, "total_step": 3})
    with pytest.raises(ConfigError, match="missing required key 'rec'"):
        build_run_config({k: v for k, v in keys.items() if k != "rec"})


# ---- checks read the library's own choices ------------------------------------------------------

def test_checks_read_the_library_definitions():
    from insightface_adadistill.backbones import list_backbones
    from insightface_adadistill.backbones.base import AMP_DTYPES, PRECISIONS
    from insightface_adadistill.heads import HEADS
    from insightface_adadistill.heads.margins import MARGIN_GRADS
    from insightface_adadistill.training import optim, schedule

    assert KEYS["optimizer"].check.values() is optim.OPTIMIZER_KINDS
    assert KEYS["lr_schedule"].check.values() is schedule.SCHEDULE_KINDS
    assert KEYS["margin_grad"].check.values() is MARGIN_GRADS
    assert KEYS["teacher_dtype"].check.values() is PRECISIONS
    assert tuple(KEYS["amp_dtype"].check.values()) == tuple(AMP_DTYPES)
    assert KEYS["network"].check.names is list_backbones is KEYS["teacher_network"].check.names
    assert KEYS["distill"].check.values() == (None, *[n for n in HEADS.names() if n != "standalone"])


@pytest.mark.parametrize("key", ["network", "teacher_network"])
def test_unknown_network_stops_at_load_with_the_closest_names(tmp_path, key):
    with pytest.raises(ConfigError, match=rf"{key} = 'r5' is not a registered backbone. "
                                          rf"Did you mean 'r50'.*Registered: .*mbf") as excinfo:
        load_with(tmp_path, **{key: "r5"})
    assert "(from --set" not in problems_of(excinfo)
    with pytest.raises(ConfigError, match=r"network = 'vit_tt' .*\(from --set network=...\)"):
        load_config(write_config(tmp_path), ["network=vit_tt"])


def test_unknown_network_stops_the_trainer_before_any_data_is_opened(tmp_path):
    from insightface_adadistill.commands.train import main

    missing = tmp_path / "no_such_dataset"
    with pytest.raises(ConfigError, match="network = 'tiny_mfm' is not a registered backbone. Did "
                                          "you mean 'tiny_mfn'") as excinfo:
        main(["tiny_cpu", "--set", f"rec={missing}", f"output={tmp_path / 'out'}", "network=tiny_mfm"])
    assert len(excinfo.value.problems) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, kind", [
    ("w600k_r50.onnx", "onnx"), ("~/.insightface/models/buffalo_l/w600k_r50.ONNX", "onnx"),
    ("buffalo_l", "pack"), ("antelopev2", "pack"),
    ("work_dirs/r50/model.pt", "torch"), ("backbone.pth", "torch"), ("runs/buffalo_l", "torch"),
])
def test_onnx_and_pack_teachers_need_no_teacher_network(tmp_path, weights, kind):
    from insightface_adadistill.teacher.kind import teacher_weights_kind

    assert teacher_weights_kind(weights) == kind
    changes = {"distill": "adadistill", "teacher_weights": weights}
    if kind == "torch":
        with pytest.raises(ConfigError, match="needs a teacher: set teacher_network") as excinfo:
            load_with(tmp_path, **changes)
        assert len(excinfo.value.problems) == 1
    else:
        assert load_with(tmp_path, **changes).teacher_network is None


# ---- one rule for each value the library also checks -------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.5, 0.99, 1e-3, -0.1, 1.5, "weighted", "plain", "mean"])
def test_distill_alpha_has_one_rule_in_the_config_and_the_head(tmp_path, alpha):
    from insightface_adadistill.heads.adadistill import check_alpha

    try:
        check_alpha(alpha)
        head_accepts = True
    except ValueError:
        head_accepts = False
    try:
        load_with(tmp_path, distill_alpha=alpha)
        config_accepts = True
    except ConfigError as exc:
        assert "must be 'weighted', 'plain' or a float in (0, 1)" in str(exc)
        config_accepts = False
    assert head_accepts == config_accepts == (alpha in (0.5, 0.99, 1e-3, "weighted", "plain"))


@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 3.0, 0.0), (1.0, 3.2, 0.0),
                                     (1.0, -0.1, 0.0), (1.0, 0.0, 0.4), (1.0, 0.0, 1.99),
                                     (1.0, 0.0, 2.0), (1.0, 0.5, 0.4), (0.9, 0.4, 0.0)])
def test_margin_list_has_one_rule_in_the_config_and_the_loss(tmp_path, margins):
    from insightface_adadistill.heads import CombinedMarginLoss

    try:
        CombinedMarginLoss(64.0, *margins)
        loss_accepts = True
    except ValueError:
        loss_accepts = False
    try:
        load_with(tmp_path, margin_list=margins)
        config_accepts = True
    except ConfigError:
        config_accepts = False
    assert loss_accepts == config_accepts
    assert config_accepts == (margins in [(1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 3.0, 0.0),
                                          (1.0, 0.0, 0.4), (1.0, 0.0, 1.99)])


def test_verbose_zero_means_no_periodic_verification(tmp_path):
    assert load_with(tmp_path, verbose=0).verbose == 0
    with pytest.raises(ConfigError, match="verbose = -1 must be >= 0"):
        load_with(tmp_path, verbose=-1)


# ---- log format, README table, command --------------------------------------------------------

def test_format_config_pads_keys_to_25_like_the_host():
    lines = format_config({"network": "r50", "interclass_filtering_threshold": 0,
                           "margin_list": [1.0, 0.5, 0.0], "a" * 25: 1})
    assert lines == [": network" + " " * 18 + "r50",
                     ": interclass_filtering_threshold0",
                     ": margin_list" + " " * 14 + "[1.0, 0.5, 0.0]",
                     ": " + "a" * 25 + "1"]


def test_config_table_lists_every_declared_key_from_its_declaration():
    table = config_table_markdown()
    assert "| key | default | type | accepted | on resume | meaning |" in table
    for key in KEYS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{key.name}` |"))
        assert key.meaning.replace("|", "/") in row and f"| {key.resume} |" in row
        if key.check is not None:
            assert key.check.describe().replace("|", "/") in row
    assert "| `lr_steps` | `[]` | list (or tuple) | increasing 1-based epoch numbers" in table
    assert "| `sample_rate` | `1` | float (or int) | in [0, 1]" in table


def test_docs_page_holds_the_current_tables():
    text = DOCS_PAGE.read_text()
    assert render_docs_page(text) == text, (
        "docs/configs.md is out of date with config/defaults.py; regenerate it with "
        "`python -m insightface_adadistill.config.table`")


def test_every_declared_key_has_a_checkable_type():
    assert defaults.known_keys() == tuple(KEYS)
    for key in KEYS.values():
        assert key.types and all(isinstance(t, type) for t in key.types), key
        assert key.group in defaults.GROUPS and key.meaning
    assert defaults.REQUIRED_KEYS == ("rec", "num_classes", "num_image", "num_epoch", "warmup_epoch",
                                      "val_targets")
    assert defaults.DERIVED_KEYS == ("total_batch_size", "warmup_step", "total_step")
    assert KEYS["teacher_classifier"].types == (str, list, type(None))
    assert KEYS["warmup_epoch"].types == (int, float)


def test_config_command_prints_the_log_lines_or_the_problems(tmp_path, capsys):
    path = write_config(tmp_path)
    assert config_main([str(path), "--world-size", "8", "--set", "lr=0.2", "fp16=false"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ": lr                       0.2" in out and ": total_step               101160" in out
    assert ": fp16                     False" in out
    with pytest.raises(ConfigError, match=r"lr = -1.0 must be > 0"):  # `adadistill` shows it, exit 2
        config_main([str(path), "--set", "lr=-1"])
