"""`adadistill demo`: the quick preset end to end, the config files it writes, its output folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from insightface_adadistill.commands.demo import main
from insightface_adadistill.config import load_config
from insightface_adadistill.demo.configs import RunPlace, write_run_configs
from insightface_adadistill.demo.pipeline import supported_fars
from insightface_adadistill.demo.presets import METHODS, PRESETS, lr_drop_epochs, pick_preset
from insightface_adadistill.demo.run import demo_output
from insightface_adadistill.outputs import OutputFolderError, folder_kind

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--preset", "quick", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed and f"tensorboard --logdir {out / 'runs'}" in printed

    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 4  # header + teacher, standalone, AdaDistill
    assert [row.split("|")[1].strip() for row in table[1:]] == [
        "teacher", "standalone student", "AdaDistill α′ student"]
    assert "tiny_resnet" in text and "instead of the paper's `r50` and `mfn`" in text
    for png in ("alpha_curves.png", "roc.png"):
        assert (out / png).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({png})" in text

    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"teacher", "standalone", "adadistill"}
    assert all(math.isfinite(x) for x in _numbers(report))
    for name, result in report["results"].items():
        assert 0.0 <= result["accuracy"] <= 1.0, name
        assert (Path(result["output"]) / "model.pt").is_file()
        assert any((Path(result["output"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert {"distill/alpha", "distill/alpha_weighted", "distill/centre_teacher_cos"} <= set(
        report["distill_final_means"])


def test_config_files_load_and_students_share_the_budget(tmp_path: Path) -> None:
    preset = PRESETS["cpu"]
    place = RunPlace(rec=str(tmp_path / "data"), runs_dir=tmp_path / "runs", seed=3, device="cpu")
    paths = write_run_configs(preset, place, tmp_path / "configs", list(METHODS))
    assert list(paths) == ["teacher", *METHODS]
    cfgs = {name: load_config(path) for name, path in paths.items()}
    assert cfgs["teacher"].network == "tiny_resnet" and tuple(cfgs["teacher"].margin_list) == (1.0, 0.5, 0.0)
    assert cfgs["teacher"].save_every_steps == cfgs["teacher"].total_step  # ArcDistill needs its classifier
    budget = ("total_step", "batch_size", "lr", "lr_scale_batch", "lr_steps", "seed", "margin_list",
              "margin_grad", "network", "weight_decay", "momentum")
    students = [cfgs[m] for m in METHODS]
    for key in budget:
        assert len({repr(getattr(c, key)) for c in students}) == 1, key
    assert cfgs["adadistill"].teacher_weights == str((tmp_path / "runs" / "teacher" / "model.pt").resolve())
    assert cfgs["adadistill_alpha"].distill_alpha == "plain" and cfgs["adadistill"].distill_alpha == "weighted"
    assert cfgs["arcdistill"].teacher_classifier.endswith("checkpoint_gpu_*.pt")
    assert cfgs["standalone"].distill is None
    assert cfgs["adaface_standalone"].margin == cfgs["adaface_adadistill"].margin == "adaface"
    assert cfgs["adaface_adadistill"].distill == "adadistill" and cfgs["adadistill"].margin == "margin_list"


def test_rerun_replaces_a_demo_folder_but_not_a_foreign_one(tmp_path: Path) -> None:
    with demo_output(tmp_path / "ours") as ours:
        (ours / "runs" / "teacher").mkdir(parents=True)
        (ours / "report.md").write_text("old")
        (ours / "notes.txt").write_text("kept")
    with demo_output(ours):
        assert not (ours / "runs").exists() and not (ours / "report.md").exists()
    assert (ours / "notes.txt").read_text() == "kept" and folder_kind(ours) == "demo"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(OutputFolderError, match="choose a new or empty folder"):
        main(["--out", str(foreign), "--preset", "quick"])  # `adadistill` shows it, exit 2


def test_presets_and_schedule() -> None:
    assert pick_preset("auto", "cpu").name == "cpu"
    assert pick_preset("quick", "auto").name == "quick"
    with pytest.raises(ValueError, match="unknown preset"):
        pick_preset("huge", "cpu")
    assert lr_drop_epochs(8) == [5, 7] and lr_drop_epochs(2) == [2] and lr_drop_epochs(1) == []
    gpu = PRESETS["gpu"]
    assert (gpu.teacher_network, gpu.student_network, gpu.embedding_size) == ("r50", "mfn", 512)


def test_supported_fars_need_twenty_false_accepts() -> None:
    assert supported_fars(44_550) == [1e-3, 1e-2, 1e-1]
    assert supported_fars(100_000) == [1e-3, 1e-2, 1e-1]
    assert supported_fars(200_000) == [1e-4, 1e-3, 1e-2, 1e-1]


def test_a_run_stopped_by_a_signal_is_not_taken_for_finished(tmp_path: Path, monkeypatch) -> None:
    from insightface_adadistill.demo import pipeline
    from insightface_adadistill.distributed import DistInfo
    from insightface_adadistill.training.train import TrainResult

    place = RunPlace(rec=str(tmp_path / "data"), runs_dir=tmp_path / "runs", seed=3, device="cpu")
    path = write_run_configs(PRESETS["quick"], place, tmp_path / "configs", ["standalone"])["standalone"]
    dist = DistInfo(0, 0, 1, torch.device("cpu"))
    monkeypatch.setattr(pipeline, "train", lambda cfg, dist: TrainResult(Path(cfg.output), 530, True))
    with pytest.raises(pipeline.TrainingStopped, match="global step 530.*resume=True"):
        pipeline.train_run(path, dist)
    monkeypatch.setattr(pipeline, "train", lambda cfg, dist: TrainResult(Path(cfg.output), 64, False))
    assert pipeline.train_run(path, dist)["steps"] == 64
