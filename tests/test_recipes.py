"""Every shipped recipe loads and validates, and the paper recipes repeat the paper's setup."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from insightface_adadistill.config import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ALL = sorted(RECIPES.glob("*.py"))
PAPER = [p for p in ALL if p.stem.startswith("paper_")]
PAPER_STUDENTS = [p for p in PAPER if not p.stem.startswith("paper_teacher_")]


def gpus(path: Path) -> int:
    """The GPU count each recipe is written for (recipes/README.md)."""
    return 1 if path.stem == "tiny_cpu" else 4 if path.stem.startswith(("paper_", "adaface_")) else 8


def load(path: Path):
    return load_config(path, world_size=gpus(path))


def ids(paths):
    return [p.stem for p in paths]


def test_the_recipe_set_is_complete():
    expected = {"ms1mv2_r50", "ms1mv2_r100", "ms1mv2_mbf", "ms1mv3_r50", "glint360k_r100_pfc02",
                "paper_mfn_standalone", "paper_mfn_vanilla_kd", "paper_mfn_arcdistill",
                "paper_mfn_adaarc_alpha_m045", "paper_mfn_adaarc_m040", "paper_mfn_adaarc_m045",
                "paper_mfn_adaarc_m050", "paper_mfn_adacos_m030", "paper_mfn_adacos_m035",
                "paper_mfn_adacos_m040", "paper_teacher_r18", "paper_teacher_r50",
                "paper_teacher_r100", "paper_mfn_adaarc_m045_r18teacher",
                "paper_mfn_adaarc_m045_r100teacher", "paper_casia_mfn_adaarc_m045",
                "paper_mfn_adaarc_m045_cached",
                "ms1mv3_mbf_adadistill", "glint360k_mbf_adadistill_pfc02", "tiny_cpu",
                "wf42m_pfc03_40epoch_8gpu_vit_t", "wf42m_pfc03_40epoch_8gpu_vit_b",
                "adaface_mfn_standalone_ms1mv2", "adaface_mfn_standalone_webface4m",
                "adaface_mfn_adadistill_ir50_ms1mv2", "adaface_mfn_adadistill_ir101_ms1mv2",
                "adaface_mfn_adadistill_ir50_webface4m", "adaface_mfn_adadistill_ir101_webface4m"}
    assert set(ids(ALL)) == expected


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_recipe_loads_and_validates(path):
    cfg = load(path)
    assert cfg.output == f"work_dirs/{path.stem}"
    assert cfg.total_step > 0


@pytest.mark.parametrize("name, total_step", [
    ("ms1mv2_r50", 113720), ("ms1mv2_r100", 113720), ("ms1mv2_mbf", 227440),
    ("ms1mv3_r50", 101160), ("ms1mv3_mbf_adadistill", 202320),
])
def test_host_recipes_give_the_published_step_counts_on_8_gpus(name, total_step):
    assert load(RECIPES / f"{name}.py").total_step == total_step


@pytest.mark.parametrize("name, network, batch_size, gradient_acc", [
    ("wf42m_pfc03_40epoch_8gpu_vit_t", "vit_t_dp005_mask0", 512, 1),
    ("wf42m_pfc03_40epoch_8gpu_vit_b", "vit_b_dp005_mask_005", 256, 12),
])
def test_vit_recipes_repeat_the_host_adamw_configs(name, network, batch_size, gradient_acc):
    cfg = load(RECIPES / f"{name}.py")
    setup = {"network": network, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.1, "sample_rate": 0.3,
             "margin_list": (1.0, 0.0, 0.4), "batch_size": batch_size, "gradient_acc": gradient_acc, "fp16": True,
             "num_classes": 2059906, "num_image": 42474557, "num_epoch": 40, "warmup_epoch": 4, "val_targets": []}
    assert {key: getattr(cfg, key) for key in setup} == setup


@pytest.mark.parametrize("path", PAPER, ids=ids(PAPER))
def test_paper_recipes_repeat_the_paper_setup(path):
    cfg = load(path)
    casia = "casia" in path.stem
    setup = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "lr": 0.1,
             "lr_scale_batch": 512, "batch_size": 128, "total_batch_size": 512,
             "lr_schedule": "step", "lr_steps": [8, 14, 20, 25], "num_epoch": 26, "warmup_epoch": 0,
             "clip_grad_norm": 5.0, "margin_grad": "exact", "sample_rate": 1.0,
             "embedding_size": 512,
             "val_targets": ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"],
             "num_classes": 10572 if casia else 85742,
             "num_image": 490623 if casia else 5822653,
             "fp16": path.stem.startswith("paper_teacher_")}
    assert {key: getattr(cfg, key) for key in setup} == setup
    assert cfg.verbose == cfg.num_image // 512 // 2  # verification every half epoch


@pytest.mark.parametrize("path", PAPER_STUDENTS, ids=ids(PAPER_STUDENTS))
def test_paper_students_margin_and_distill_follow_the_name(path):
    cfg = load(path)
    assert cfg.network == "mfn"
    arc = re.search(r"_adacos_m0(\d\d)", path.stem)
    if arc:
        assert list(cfg.margin_list) == [1.0, 0.0, int(arc.group(1)) / 100]
    else:
        m = re.search(r"_m0(\d\d)", path.stem)
        assert list(cfg.margin_list) == [1.0, int(m.group(1)) / 100 if m else 0.45, 0.0]
    expected = {"standalone": None, "vanilla_kd": "feature_kd", "arcdistill": "arcdistill"}
    kind = next((v for k, v in expected.items() if k in path.stem), "adadistill")
    assert cfg.distill == kind
    if kind == "adadistill":
        assert cfg.distill_alpha == ("plain" if "_alpha_" in path.stem else "weighted")


ADAFACE = [p for p in ALL if p.stem.startswith("adaface_")]
DISTILLED = [p for p in ALL if "config.distill = \"" in p.read_text() and p not in ADAFACE]


@pytest.mark.parametrize("path", ADAFACE, ids=ids(ADAFACE))
def test_adaface_recipes_are_the_paper_student_setup_with_the_adaface_margin(path):
    """AdaFace's margin at its paper values, the AdaDistill paper's student setup, and for the
    distilled rows AdaFace's released teacher that the file name says."""
    cfg = load(path)
    ms1mv2 = path.stem.endswith("_ms1mv2")
    setup = {"network": "mfn", "margin": "adaface", "adaface_m": 0.4, "adaface_h": 0.333, "adaface_t_alpha": 0.01,
             "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "lr": 0.1, "lr_scale_batch": 512,
             "batch_size": 128, "total_batch_size": 512, "lr_schedule": "step", "lr_steps": [8, 14, 20, 25],
             "num_epoch": 26, "warmup_epoch": 0, "clip_grad_norm": 5.0, "sample_rate": 1.0, "embedding_size": 512,
             "fp16": False, "num_classes": 85742 if ms1mv2 else 205990, "num_image": 5822653 if ms1mv2 else 4235242}
    assert {key: getattr(cfg, key) for key in setup} == setup
    assert cfg.verbose == cfg.num_image // 512 // 2
    match = re.fullmatch(r"adaface_mfn_adadistill_ir(\d+)_(\w+)", path.stem)
    if match is None:
        assert cfg.distill is None and path.stem.startswith("adaface_mfn_standalone_")
        return
    depth, data = match.groups()
    assert (cfg.distill, cfg.distill_alpha, cfg.teacher_network) == ("adadistill", "weighted", f"ir_{depth}")
    assert cfg.teacher_weights == f"pretrained/adaface_ir{depth}_{data}.ckpt"  # the release's file name


@pytest.mark.parametrize("path", DISTILLED, ids=ids(DISTILLED))
def test_teacher_placeholders_point_at_a_shipped_teacher_recipe(path):
    cfg = load(path)
    match = re.fullmatch(r"work_dirs/(\w+)/model\.pt", cfg.teacher_weights)
    assert match, cfg.teacher_weights
    teacher = load(RECIPES / f"{match.group(1)}.py")
    assert teacher.network == cfg.teacher_network and teacher.distill is None
    assert teacher.embedding_size == cfg.embedding_size
    assert teacher.num_classes == cfg.num_classes or "casia" in path.stem
    if cfg.distill == "arcdistill":
        assert cfg.teacher_classifier == f"work_dirs/{match.group(1)}/checkpoint_gpu_*.pt"
        assert teacher.save_all_states is True


def test_readme_lists_every_recipe_and_nothing_else():
    readme = (RECIPES / "README.md").read_text()
    listed = set(re.findall(r"`(\w+)\.py`", readme))
    assert listed == set(ids(ALL))


def test_recipe_networks_are_registered_backbones():
    from insightface_adadistill.backbones import list_backbones

    names = set(list_backbones())
    for path in ALL:
        cfg = load(path)
        assert cfg.network in names, f"{path.name}: network {cfg.network!r}"
        assert cfg.teacher_network in names | {None}, f"{path.name}: {cfg.teacher_network!r}"


def test_cached_main_row_differs_from_the_main_row_only_by_the_cache():
    main = load(RECIPES / "paper_mfn_adaarc_m045.py").as_dict()
    cached = load(RECIPES / "paper_mfn_adaarc_m045_cached.py").as_dict()
    differing = {key for key in main if main[key] != cached[key]}
    assert differing == {"teacher_cache", "output"}
