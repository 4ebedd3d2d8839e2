"""End-to-end CPU training: one and two gloo processes, exact resume, host compatibility, distillation.

kill -9, signals, a full disk and concurrent runs are in test_faults.py.

Every run uses the tiny recipe (tiny backbones, 16 synthetic identities), so each launch takes
seconds; the multi-process runs go through torchrun exactly as users launch them.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from insightface_adadistill.backbones import get_model
from insightface_adadistill.serialization import load_file
from insightface_adadistill.commands.train import main
from insightface_adadistill.outputs import OutputFolderError
from insightface_adadistill.training.checkpoint import sets as ckpt
from insightface_adadistill.training.train import NonFiniteLossError
from run_utils import REPO, TINY, TORCHRUN, assert_same_states, latest_states



def _train(output: Path, *overrides: str) -> Path:
    assert main([TINY, "--set", f"output={output}", "progress_bar=false", *overrides]) == 0
    return output


def _torchrun(output: Path, *overrides: str, nproc: int = 2, extra: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, f"--nproc_per_node={nproc}", *extra, "-m", "insightface_adadistill",
           "train", TINY, "--set", f"output={output}", "progress_bar=false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A tiny teacher trained by our own trainer, with its Partial FC shard saved at step 8."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    return _train(out, "network=tiny_resnet", "save_every_steps=8", "max_steps=8")


def test_single_process_run_writes_host_files(tmp_path: Path, caplog) -> None:
    out = _train(tmp_path / "run", "max_steps=8")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # the tiny recipe runs clean
    state = load_file(out / "model.pt")
    model = get_model("tiny_mfn", num_features=64)
    model.load_state_dict(state, strict=True)
    log = (out / "training.log").read_text()
    assert "Speed" in log and "Global Step: 8" in log and "finished" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "learning_rate", "time_for_end", "throughput", "train/target_prob"} <= scalars
    assert not [tag for tag in scalars if tag.startswith("distill/")]  # a standalone run distils nothing


def test_dali_true_runs_on_our_loader_with_one_line_saying_so(tmp_path: Path) -> None:
    """The host's wf42m_pfc02_vit_h.py sets dali = True: a copied config runs, on our DataLoader."""
    out = _train(tmp_path / "run", "dali=True", "dali_aug=True", "max_steps=1")
    notes = [line for line in (out / "training.log").read_text().splitlines() if "DALI is not used" in line]
    assert len(notes) == 1 and "our DataLoader reads" in notes[0]


def test_verbose_zero_runs_without_periodic_verification(tmp_path: Path) -> None:
    out = _train(tmp_path / "run", "verbose=0", "max_steps=2")  # no `step % 0` anywhere
    assert "finished" in (out / "training.log").read_text()


def test_resume_is_exact(tmp_path: Path) -> None:
    straight = _train(tmp_path / "straight", "max_steps=12", "save_every_steps=4", "sample_rate=0.5")
    split = tmp_path / "split"
    _train(split, "max_steps=6", "save_every_steps=4", "sample_rate=0.5")  # stops after step 6, set at 4
    _train(split, "max_steps=12", "save_every_steps=4", "sample_rate=0.5", "resume=True")
    assert_same_states(latest_states(straight, 1)[0], latest_states(split, 1)[0])


def _scalar_events(output: Path) -> dict:
    """tag -> [(step, value)] as TensorBoard shows them (its loader applies the purge markers)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_after_stop_and_resume_shows_each_step_once(tmp_path: Path, teacher_run: Path) -> None:
    run = ("save_every_steps=4", "frequent=1", "distill=adadistill", "teacher_network=tiny_resnet",
           f"teacher_weights={teacher_run / 'model.pt'}")
    straight = _train(tmp_path / "straight", *run, "max_steps=8")
    split = tmp_path / "split"
    _train(split, *run, "max_steps=6")  # logs steps 1-6, its newest set is at step 4
    _train(split, *run, "max_steps=8", "resume=True")  # steps 5 and 6 again, then 7 and 8
    logged, expected = _scalar_events(split), _scalar_events(straight)
    assert logged.keys() == expected.keys() and "loss" in logged
    for tag in logged:
        assert [step for step, _ in logged[tag]] == list(range(1, 9)), tag
        if tag not in ("throughput", "time_for_end"):  # clock readings; the rest equals the straight run
            assert logged[tag] == expected[tag], tag


def test_distillation_resume_is_exact(tmp_path: Path, teacher_run: Path) -> None:
    """AdaDistill centres, the visited mask, the sampler and the optimizer resume bit for bit."""
    args = ("distill=adadistill", "teacher_network=tiny_resnet", f"teacher_weights={teacher_run / 'model.pt'}",
            "sample_rate=0.5", "save_every_steps=4")
    straight = _train(tmp_path / "straight", *args, "max_steps=12")
    split = tmp_path / "split"
    _train(split, *args, "max_steps=6")
    _train(split, *args, "max_steps=12", "resume=True")
    a, b = latest_states(straight, 1)[0], latest_states(split, 1)[0]
    assert_same_states(a, b)
    assert set(a["state_dict_softmax_fc"]) == {"weight", "visited"}


def test_refuses_output_of_another_run(tmp_path: Path) -> None:
    out = _train(tmp_path / "run", "max_steps=2")
    with pytest.raises(OutputFolderError, match="resume=True"):
        _train(out, "max_steps=2")


def test_nonfinite_loss_stops_with_diagnostic(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="lr"):
        _train(tmp_path / "run", "lr=1e30", "max_steps=8", "clip_grad_norm=0")


@pytest.mark.slow
def test_two_processes_keep_one_model_and_sharded_head(tmp_path: Path) -> None:
    """gloo x2: DDP keeps the student identical on both ranks; the head is sharded as the host's.

    (Exact 2 x B == 1 x 2B equality of loss and gradients is tested on the heads themselves:
    BatchNorm's per-rank batch statistics make whole-backbone runs differ, as in arcface_torch.)
    """
    two = _torchrun(tmp_path / "two", "max_steps=4", "batch_size=8", "save_every_steps=4", "num_classes=15")
    assert two.returncode == 0, two.stderr[-3000:]
    rank0, rank1 = latest_states(tmp_path / "two", 2)
    for name, value in rank0["state_dict_backbone"].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, rank1["state_dict_backbone"][name]), name
    assert [s["state_dict_softmax_fc"]["weight"].shape[0] for s in (rank0, rank1)] == [8, 7]
    assert torch.equal(load_file(tmp_path / "two" / "model.pt")["conv1.conv.weight"],
                       rank0["state_dict_backbone"]["conv1.conv.weight"])


@pytest.mark.slow
def test_two_process_distillation_then_resume_on_one_process(tmp_path: Path, teacher_run: Path) -> None:
    """AdaDistill under torchrun x2 with sampling; the 2-rank set resumes on 1 rank (re-sharded)."""
    out = tmp_path / "run"
    args = ("distill=adadistill", "teacher_network=tiny_resnet", f"teacher_weights={teacher_run / 'model.pt'}",
            "sample_rate=0.5", "batch_size=8", "save_every_steps=4", "num_classes=15")
    two = _torchrun(out, *args, "max_steps=4")
    assert two.returncode == 0, two.stderr[-3000:]
    shards = latest_states(out, 2)
    centres = torch.cat([s["state_dict_softmax_fc"]["weight"] for s in shards])  # (15, E) in class order
    assert "alpha=" in (out / "training.log").read_text()
    _train(out, *args, "max_steps=8", "resume=True", "resume_allow_changes=True")  # world size 2 -> 1
    assert "re-sharding" in (out / "training.log").read_text()
    resumed = ckpt.load_checkpoint_set(ckpt.find_latest_complete(out), 0, 1)
    assert resumed["state_dict_softmax_fc"]["weight"].shape == centres.shape


@pytest.fixture(scope="module")
def standalone_run(tmp_path_factory) -> Path:
    """The tiny student without a teacher, 4 steps: what every distilled run must differ from."""
    return _train(tmp_path_factory.mktemp("standalone") / "run", "max_steps=4")


def _student(output: Path) -> dict:
    """The finished student's state_dict (model.pt), checked to load strictly into tiny_mfn."""
    state = load_file(output / "model.pt")
    get_model("tiny_mfn", num_features=64).load_state_dict(state, strict=True)
    return state


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("variant", [
    ("distill=adadistill", "distill_alpha=weighted"),
    ("distill=adadistill", "distill_alpha=plain", "sample_rate=0.5"),
    ("distill=adadistill", "distill_alpha=0.9"),
    ("distill=feature_kd",),
], ids=["alpha_weighted", "alpha_plain_sampled", "alpha_fixed", "feature_kd"])
def test_distillation_variants_run(tmp_path: Path, teacher_run: Path, standalone_run: Path,
                                   variant: tuple) -> None:
    out = _train(tmp_path / "student", *variant, "teacher_network=tiny_resnet",
                 f"teacher_weights={teacher_run / 'model.pt'}", "max_steps=4")
    student = _student(out)
    assert all(torch.isfinite(v).all() for v in student.values() if v.is_floating_point())
    assert _differs(student, _student(standalone_run)), "same seed and steps: the teacher must change the result"
    if "distill=adadistill" in variant:
        log = (out / "training.log").read_text()
        assert "alpha=" in log and "centre_teacher_cos=" in log


def test_arcdistill_from_teacher_partial_fc_shards(tmp_path: Path, teacher_run: Path,
                                                   standalone_run: Path) -> None:
    out = _train(tmp_path / "student", "distill=arcdistill", f"teacher_classifier={teacher_run}/checkpoint_gpu_*.pt",
                 "max_steps=4", "save_every_steps=4")
    teacher_fc = latest_states(teacher_run, 1)[0]["state_dict_softmax_fc"]["weight"]
    student_fc = latest_states(out, 1)[0]["state_dict_softmax_fc"]["weight"]
    assert torch.equal(student_fc, teacher_fc), "arcdistill trains against the teacher's frozen classifier"
    assert _differs(_student(out), _student(standalone_run))


def test_teacher_in_published_code_format(tmp_path: Path, teacher_run: Path) -> None:
    """The AdaDistill code saved `<step>backbone.pth` state dicts (possibly DataParallel-prefixed)."""
    state = load_file(teacher_run / "model.pt")
    published = tmp_path / "295672backbone.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, published)
    args = ("distill=adadistill", "teacher_network=tiny_resnet", "max_steps=2")
    from_published = _train(tmp_path / "published", *args, f"teacher_weights={published}")
    from_model_pt = _train(tmp_path / "model_pt", *args, f"teacher_weights={teacher_run / 'model.pt'}")
    assert not _differs(_student(from_published), _student(from_model_pt)), "the same teacher, bit for bit"


def test_missing_teacher_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        _train(tmp_path / "student", "distill=adadistill", "teacher_network=tiny_resnet",
               f"teacher_weights={tmp_path / 'nope.pt'}", "max_steps=2")


def test_train_returns_its_result_and_restores_the_signal_handlers(tmp_path: Path) -> None:
    from insightface_adadistill import distributed
    from insightface_adadistill.config import load_config
    from insightface_adadistill.training.train import TrainResult, train

    def handlers():
        return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    before = handlers()
    cfg = load_config(TINY, [f"output={tmp_path / 'run'}", "progress_bar=false", "max_steps=3"])
    dist = distributed.init_distributed("cpu")
    try:
        assert train(cfg, dist) == TrainResult(tmp_path / "run", 3, stopped_by_signal=False)
    finally:
        distributed.destroy_distributed()
    assert handlers() == before
    with pytest.raises(NonFiniteLossError):
        _train(tmp_path / "nan", "lr=1e30", "max_steps=8", "clip_grad_norm=0")
    assert handlers() == before


def test_a_save_inside_gradient_accumulation_resumes_exactly(tmp_path: Path) -> None:
    """Sets at steps 3 and 6 with gradient_acc=2: step 3 holds half an accumulated gradient."""
    args = ("gradient_acc=2", "save_every_steps=3", "keep_checkpoints=4")
    straight = _train(tmp_path / "straight", *args, "max_steps=6")
    split = tmp_path / "split"
    _train(split, *args, "max_steps=4")  # stops after step 4; its newest set is step 3
    assert ckpt.load_checkpoint_set(ckpt.find_latest_complete(split), 0, 1)["accumulated_grads"] is not None
    _train(split, *args, "max_steps=6", "resume=True")
    assert_same_states(latest_states(straight, 1)[0], latest_states(split, 1)[0])


def test_resuming_a_run_that_reached_max_steps_trains_no_further_step(tmp_path: Path) -> None:
    out = _train(tmp_path / "run", "max_steps=4", "save_every_steps=4")
    saved = latest_states(out, 1)[0]
    _train(out, "max_steps=4", "save_every_steps=4", "resume=True")
    assert [p.name for p in ckpt.list_complete_sets(out)] == ["step_000000004"]
    model = load_file(out / "model.pt")
    assert all(torch.equal(model[k], v) for k, v in saved["state_dict_backbone"].items())


def _write_small_rec(folder: Path, seed: int = 0) -> Path:
    import numpy as np

    from insightface_adadistill.data.decode import encode_jpeg
    from insightface_adadistill.data.recordio import IRHeader, pack, write_records

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_records(folder / "train.rec", [
        (k, pack(IRHeader(0, float(k % 16), k, 0), encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))))
        for k in range(64)])
    return folder


@pytest.fixture(scope="module")
def small_rec(tmp_path_factory) -> tuple:
    """A real 64-image train.rec of 16 identities: 4 steps per epoch at batch 16 (synthetic never ends)."""
    return f"rec={_write_small_rec(tmp_path_factory.mktemp('rec'))}", "num_image=64"


def test_num_image_that_disagrees_with_the_data_stops_unless_warn(tmp_path: Path, small_rec: tuple, capsys) -> None:
    from insightface_adadistill import cli

    rec = small_rec[0]
    assert cli.main(["train", TINY, "--set", rec, "num_image=100", f"output={tmp_path / 'stop'}",
                     "progress_bar=false"]) == 2
    err = capsys.readouterr().err
    assert "config num_image = 100" in err and "holds 64 images" in err and "--set num_image=64" in err
    assert "num_image_mismatch = 'warn'" in err and "Traceback" not in err
    out = _train(tmp_path / "warn", rec, "num_image=100", "num_image_mismatch=warn", "max_steps=2")
    assert "num_image = 100, but RecordIO dataset" in (out / "training.log").read_text()


def test_save_all_states_checkpoints_the_last_epoch_like_the_host(tmp_path: Path, small_rec: tuple) -> None:
    out = _train(tmp_path / "run", *small_rec, "num_epoch=2", "save_all_states=True")
    host_file = load_file(out / "checkpoint_gpu_0.pt")  # what arcface_torch's resume=True reads
    assert (host_file["epoch"], host_file["global_step"], host_file["batch_in_epoch"]) == (2, 8, 0)
    model = load_file(out / "model.pt")
    assert all(torch.equal(model[k], v) for k, v in host_file["state_dict_backbone"].items())


def test_our_iresnet_optimizer_state_loads_into_the_hosts_optimizer(teacher_run: Path) -> None:
    checkpoint = load_file(teacher_run / "checkpoint_gpu_0.pt")
    backbone = get_model("tiny_resnet", num_features=64)
    partial_fc = torch.nn.Module()
    partial_fc.weight = torch.nn.Parameter(torch.zeros_like(checkpoint["state_dict_softmax_fc"]["weight"]))
    # arcface_torch train_v2: SGD(params=[{"params": backbone.parameters()}, {"params": pfc.parameters()}])
    opt = torch.optim.SGD(params=[{"params": backbone.parameters()}, {"params": partial_fc.parameters()}],
                          lr=0.1, momentum=0.9, weight_decay=5e-4)
    assert sum(not p.requires_grad for p in backbone.parameters()) == 1  # the frozen features.weight
    opt.load_state_dict(checkpoint["state_optimizer"])
    backbone.load_state_dict(checkpoint["state_dict_backbone"])


def test_resume_refuses_a_finished_run_without_checkpoints(tmp_path: Path) -> None:
    from insightface_adadistill.training.checkpoint import ResumeError

    out = _train(tmp_path / "run", "max_steps=2")
    before = (out / "model.pt").read_bytes()
    with pytest.raises(ResumeError, match="overwrite its model.pt"):
        _train(out, "max_steps=2", "resume=True")
    assert (out / "model.pt").read_bytes() == before


def test_a_host_output_folder_is_converted_then_resumed(tmp_path: Path, small_rec: tuple, capsys) -> None:
    """Host-shaped files (host keys only, no set) -> one message -> convert-host-checkpoint -> resume."""
    from insightface_adadistill.commands import convert_host_checkpoint
    from insightface_adadistill.training.checkpoint import HOST_KEYS, CheckpointError, ResumeError

    ours = _train(tmp_path / "ours", *small_rec, "network=tiny_resnet", "save_all_states=True", "num_epoch=2",
                  "max_steps=4")  # the host file of epoch 1 of 2
    host = tmp_path / "host"
    host.mkdir()
    full = load_file(ours / "checkpoint_gpu_0.pt")
    torch.save({k: full[k] for k in HOST_KEYS}, host / "checkpoint_gpu_0.pt")
    (host / "model.pt").write_bytes((ours / "model.pt").read_bytes())
    args = (*small_rec, "network=tiny_resnet", "num_epoch=2", "resume=True")
    with pytest.raises(ResumeError, match=f"convert-host-checkpoint {host}"):
        _train(host, *args)
    assert convert_host_checkpoint.main([str(host)]) == 0
    assert "resume=True" in capsys.readouterr().out
    _train(host, *args)
    log = (host / "training.log").read_text()
    assert "resumed from" in log and "epoch 1, batch 0, global step 4" in log and "Global Step: 8" in log
    assert load_file(host / "checkpoint_gpu_0.pt")["state_dict_backbone"].keys() == full["state_dict_backbone"].keys()
    with pytest.raises(CheckpointError, match="nothing to convert"):
        convert_host_checkpoint.main([str(host)])


def test_resume_compares_the_teacher_and_the_data_by_content(tmp_path: Path, teacher_run: Path,
                                                             small_rec: tuple) -> None:
    """Another teacher file (same network, perturbed weights) or another dataset is refused naming both;
    resume_allow_changes=True continues and logs the change; the same teacher copied elsewhere resumes."""
    import re

    from insightface_adadistill.training.checkpoint import ResumeError

    teacher, state = teacher_run / "model.pt", load_file(teacher_run / "model.pt")
    copied, perturbed = tmp_path / "copied.pt", tmp_path / "perturbed.pt"
    copied.write_bytes(teacher.read_bytes())
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, perturbed)
    args = ("distill=adadistill", "teacher_network=tiny_resnet", "save_every_steps=2", "num_image=64", "num_epoch=3")
    out = _train(tmp_path / "run", *args, small_rec[0], f"teacher_weights={teacher}", "max_steps=2")

    def changed(key: str, old: Path, new: Path) -> str:
        return rf"{key}: '{re.escape(str(old))} \(sha256 \w+\)' saved, '{re.escape(str(new))} \(sha256 \w+\)' now"

    log_before = (out / "training.log").read_bytes()
    with pytest.raises(ResumeError, match=changed("teacher_weights", teacher, perturbed) + ".*resume_allow_changes"):
        _train(out, *args, small_rec[0], f"teacher_weights={perturbed}", "max_steps=4", "resume=True")
    assert (out / "training.log").read_bytes() == log_before  # refused before the log opens
    _train(out, *args, small_rec[0], f"teacher_weights={copied}", "max_steps=4", "resume=True")  # same content
    _train(out, *args, small_rec[0], f"teacher_weights={perturbed}", "max_steps=6", "resume=True",
           "resume_allow_changes=True")
    log = (out / "training.log").read_text()
    assert re.search("resume_allow_changes=True: continuing .*" + changed("teacher_weights", copied, perturbed), log)
    rec, other = Path(small_rec[0][4:]), _write_small_rec(tmp_path / "other_rec", seed=1)
    with pytest.raises(ResumeError, match=changed("rec", rec, other)):
        _train(out, *args, f"rec={other}", f"teacher_weights={perturbed}", "max_steps=8", "resume=True")
    _train(out, *args, f"rec={other}", f"teacher_weights={perturbed}", "max_steps=8", "resume=True",
           "resume_allow_changes=True")
    log = (out / "training.log").read_text()
    assert re.search("continuing .*" + changed("rec", rec, other), log) and "Global Step: 8" in log


def test_a_second_run_on_a_claimed_folder_is_refused_before_it_writes(tmp_path: Path) -> None:
    from insightface_adadistill.outputs import claim_output

    out = tmp_path / "run"
    with claim_output(out, "train"):  # what the first run's rank 0 holds while it trains
        with pytest.raises(OutputFolderError, match=f"{out} is in use by another job"):
            _train(out, "max_steps=2")
    assert not (out / "training.log").exists() and not (out / "model.pt").exists()


def test_an_output_that_is_a_file_is_one_message_from_the_cli(tmp_path: Path, capsys) -> None:
    from insightface_adadistill import cli

    target = tmp_path / "out"
    target.write_text("notes")
    assert cli.main(["train", TINY, "--set", f"output={target}", "progress_bar=false"]) == 2
    err = capsys.readouterr().err
    assert f"adadistill train: error: output {target} is a file, not a folder" in err
    assert "Traceback" not in err and target.read_text() == "notes"
