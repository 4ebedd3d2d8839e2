"""`adadistill host-train`: our head inside a host-shaped arcface_torch checkout (tests/host_shaped).

The checkout checks, the config split and the registered pieces are tested in this process; the
runs go through `python -m insightface_adadistill host-train` (and torchrun) in their own processes,
as users launch them. Exact parity with our own trainer needs the two loops to do the same
arithmetic: the host's fp16 gradient compression (HOST_SHAPED_COMM_HOOK=none turns it off) and its
ArcFace, which round-trips every non-target logit through cos(arccos(x)), are the two differences,
so the parity runs use CosFace and no compression; the default runs check the mechanics.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

from insightface_adadistill.backbones import get_model
from insightface_adadistill import cli
from insightface_adadistill.config import ConfigError
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.errors import DataError
from insightface_adadistill.data.recordio import IRHeader, pack, write_records
from insightface_adadistill.heads import CombinedMarginLoss
from insightface_adadistill.host import HostCheckoutError, check_checkout, load_host_config
from insightface_adadistill.host.checkout import check_host_api, host_import_path, import_host_module
from insightface_adadistill.host.config import DistillSettings
from insightface_adadistill.host.environment import HostEnvironmentError, check_host_environment
from insightface_adadistill.host.feed import TeacherFeed
from insightface_adadistill.host.runner import HostMargin, HostRegistration, check_host_data, load_distill_parts
from insightface_adadistill.host.summary import tap_summary_writer

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / "tests" / "host_shaped"
JOB = HOST / "configs" / "tiny_host.py"
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
HOST_MODULES = ("backbones", "partial_fc_v2")
EXACT = ("margin_list=1.0,0.0,0.4",)  # CosFace: the host's margin does the same arithmetic as ours
OUR_STUDENT = ("network=tiny_mfn",)  # our registry's student, for the parity runs and our trainer

# A user's checkout whose get_model and get_dataloader call our package: the parity runs need the
# student and the batches of our trainer, and tests/host_shaped itself imports nothing of ours.
OUR_PARTS = {
    "backbones/__init__.py": ("from insightface_adadistill import backbones\n\n\n"
                              "def get_model(name, **kwargs):\n    return backbones.get_model(name, **kwargs)\n"),
    "dataset.py": '''from torch import distributed

from insightface_adadistill.data.datasets import build_dataset
from insightface_adadistill.data.loader import build_dataloader


class _Batches:
    def __init__(self, loader):
        self.loader = loader

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            yield batch.image, batch.label


def get_dataloader(root_dir, local_rank, batch_size, dali=False, dali_aug=False, seed=2048, num_workers=2,
                   num_classes=None):
    dataset = build_dataset(root_dir, num_classes, seed)
    return _Batches(build_dataloader(dataset, batch_size, distributed.get_rank(), distributed.get_world_size(),
                                     seed, num_workers, "cpu"))
''',
}


@pytest.fixture
def clean_host_modules():
    """In-process imports of a checkout's modules must not leak into other tests."""
    yield
    for name in [k for k in sys.modules if k.split(".")[0] in HOST_MODULES]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict[str, Path]:
    """128 images of 16 identities as a .rec, and a (random) tiny_resnet teacher file."""
    root = tmp_path_factory.mktemp("host_data")
    images = [np.random.default_rng(k).integers(0, 256, (112, 112, 3), dtype=np.uint8) for k in range(128)]
    write_records(root / "train.rec", [(k, pack(IRHeader(0, float(k % 16), k, 0), encode_jpeg(image)))
                                       for k, image in enumerate(images)])
    torch.manual_seed(1)
    torch.save(get_model("tiny_resnet", num_features=64).state_dict(), root / "teacher.pt")
    return {"rec": root, "teacher": root / "teacher.pt"}


def _distill(data: Dict[str, Path]) -> Tuple[str, ...]:
    return ("distill=adadistill", "teacher_network=tiny_resnet", f"teacher_weights={data['teacher']}")


def _launch(command: List[str], data: Dict[str, Path], output: Path, overrides: Tuple[str, ...], nproc: int,
            env: Optional[Dict[str, str]] = None) -> Path:
    args = [*command, "--set", f"rec={data['rec']}", f"output={output}", *overrides]
    prefix = ([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m"] if nproc > 1
              else [sys.executable, "-m"])
    done = subprocess.run([*prefix, "insightface_adadistill", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          cwd=output.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return output


def host_run(data: Dict[str, Path], output: Path, *overrides: str, nproc: int = 1,
             env: Optional[Dict[str, str]] = None, checkout: Path = HOST) -> Path:
    """`host-train tests/host_shaped tiny_host.py` (or another checkout) on the test data."""
    return _launch(["host-train", str(checkout), str(JOB)], data, output, overrides, nproc, env)


def our_run(data: Dict[str, Path], output: Path, *overrides: str, nproc: int = 1) -> Path:
    """`adadistill train tiny_host.py` on the same data, writing a checkpoint set every 4 steps."""
    return _launch(["train", str(JOB)], data, output,
                   (*OUR_STUDENT, *overrides, "progress_bar=false", "save_every_steps=4"), nproc)


def with_our_parts(tmp_path: Path) -> Path:
    """A copy of the stand-in whose student and loader are ours (OUR_PARTS), for the parity runs."""
    root = _copy_of_host(tmp_path)
    for name, text in OUR_PARTS.items():
        (root / name).write_text(text)
    return root


def host_refusal(checkout: Path, data: Dict[str, Path], output: Path, *args: str) -> str:
    """The one-line error of a host-train run that must stop before the host starts (exit status 2)."""
    done = subprocess.run([sys.executable, "-m", "insightface_adadistill", "host-train", str(checkout), str(JOB),
                           "--set", f"rec={data['rec']}", f"output={output}", *args],
                          capture_output=True, text=True, timeout=300, cwd=output.parent)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def scalars(output: Path) -> Dict[str, Dict[int, float]]:
    """TensorBoard scalars of a run (or of a folder of event files): tag -> step -> value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    folder = output / "tensorboard" if (output / "tensorboard").is_dir() else output
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def logged_steps(output: Path) -> Dict[str, List[int]]:
    """tag -> the steps TensorBoard shows, in order, repeats included (its loader applies purge markers)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def shard(output: Path, rank: int) -> dict:
    return torch.load(output / f"checkpoint_gpu_{rank}.pt", weights_only=False)


# ------------------------------------------------------------------ the checkout

def _copy_of_host(tmp_path: Path) -> Path:
    return Path(shutil.copytree(HOST, tmp_path / "arcface_torch", ignore=shutil.ignore_patterns("__pycache__")))


def test_the_stand_in_imports_nothing_of_ours() -> None:
    """A stand-in that ran our code would compare our code with itself."""
    for path in sorted(HOST.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] == "insightface_adadistill" for name in names), path
    assert "insightface_adadistill" not in "".join(p.read_text() for p in HOST.rglob("*.py"))


def test_host_shaped_checkout_passes(clean_host_modules) -> None:
    checkout = check_checkout(HOST)
    with host_import_path(checkout):
        check_host_api(checkout, import_host_module(checkout, "backbones"),
                       import_host_module(checkout, "partial_fc_v2"))


@pytest.mark.parametrize("break_it,expected", [
    (lambda root: (root / "train_v2.py").unlink(), "train_v2.py not found"),
    (lambda root: (root / "configs" / "base.py").unlink(), "base.py not found"),
    (lambda root: (root / "partial_fc_v2.py").write_text("class PartialFC:\n    pass\n"),
     "does not define PartialFC_V2"),
    (lambda root: (root / "backbones" / "__init__.py").write_text("def build(name):\n    pass\n"),
     "does not define get_model"),
])
def test_not_an_arcface_checkout_is_refused_by_file(tmp_path: Path, break_it, expected: str) -> None:
    root = _copy_of_host(tmp_path)
    break_it(root)
    with pytest.raises(HostCheckoutError, match=expected):
        check_checkout(root)


def test_get_model_with_another_signature_is_refused(tmp_path: Path, clean_host_modules) -> None:
    root = _copy_of_host(tmp_path)
    (root / "backbones" / "__init__.py").write_text("def get_model(name, width):\n    pass\n")
    checkout = check_checkout(root)
    with host_import_path(checkout), pytest.raises(HostCheckoutError, match=r"get_model\(name, width\)"):
        check_host_api(checkout, import_host_module(checkout, "backbones"),
                       import_host_module(checkout, "partial_fc_v2"))


def test_command_prints_one_clear_refusal(tmp_path: Path, capsys) -> None:
    assert cli.main(["host-train", str(tmp_path), str(JOB)]) == 2
    err = capsys.readouterr().err
    assert "train_v2.py not found" in err and str(tmp_path) in err and "Traceback" not in err
    missing = tmp_path / "no_teacher.pt"
    assert cli.main(["host-train", str(HOST), "--set", "distill=adadistill", "teacher_network=tiny_resnet",
                     f"teacher_weights={missing}", str(JOB)]) == 2  # CONFIG after --set works too
    err = capsys.readouterr().err
    assert f"{missing}" in err and "not found" in err and "Traceback" not in err


# ------------------------------------------------------------------ the Python environment

UPSTREAM_SCHEDULER_INIT = "super().__init__(optimizer, last_epoch=last_epoch, verbose=verbose)"


def _with_upstream_scheduler(tmp_path: Path) -> Path:
    """A copy whose lr_scheduler.py passes verbose= to LRScheduler.__init__, as upstream's does."""
    root = _copy_of_host(tmp_path)
    path = root / "lr_scheduler.py"
    text = path.read_text()
    text = text.replace("power=1.0, last_epoch=-1):", "power=1.0, last_epoch=-1, verbose=False):")
    path.write_text(text.replace("super().__init__(optimizer, last_epoch)", UPSTREAM_SCHEDULER_INIT))
    return root


def test_upstream_lr_scheduler_is_named_with_its_fix_and_the_opt_in_runs_it(tmp_path: Path, data) -> None:
    root = _with_upstream_scheduler(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    err = host_refusal(root, data, tmp_path / "refused")
    line = next(i for i, text in enumerate((root / "lr_scheduler.py").read_text().splitlines(), 1)
                if UPSTREAM_SCHEDULER_INIT in text)
    assert f"{root / 'lr_scheduler.py'}:{line}: `{UPSTREAM_SCHEDULER_INIT}` passes verbose=" in err
    assert "change it to `super().__init__(optimizer, last_epoch=last_epoch)`" in err
    assert "--compatible-lr-scheduler" in err and not (tmp_path / "refused").exists()
    out = host_run(data, tmp_path / "run", "--compatible-lr-scheduler", checkout=root)
    assert "Global Step: 8" in (out / "training.log").read_text()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts} == before


def test_a_missing_host_dependency_is_one_line_with_its_install_command(tmp_path: Path, data) -> None:
    root = _copy_of_host(tmp_path)
    dataset = root / "dataset.py"
    dataset.write_text("import mxnet as mx  # as upstream's dataset.py\n" + dataset.read_text())
    err = host_refusal(root, data, tmp_path / "refused")
    assert f"{dataset} imports mxnet, which this Python does not have" in err
    assert f'{sys.executable} -m pip install "mxnet==1.9.1" "numpy<1.24"' in err
    if importlib.util.find_spec("torchvision") is None:  # our package does not need it; the host does
        dataset.write_text(dataset.read_text().replace("import mxnet as mx", "import torchvision"))
        torchvision = f'"torchvision==0.{int(torch.__version__.split(".")[1]) + 15}.*"'  # built for this torch
        assert f"-m pip install {torchvision}" in host_refusal(root, data, tmp_path / "refused")


def test_a_module_the_host_imports_late_is_named_too(tmp_path: Path, data) -> None:
    """A ViT's timm is imported inside get_model: caught when the host fails, still one line."""
    root = _copy_of_host(tmp_path)
    backbones = root / "backbones" / "__init__.py"
    backbones.write_text(backbones.read_text().replace(
        "def get_model(name, **kwargs):\n", "def get_model(name, **kwargs):\n    import timm_is_not_here  # noqa\n"))
    err = host_refusal(root, data, tmp_path / "refused")
    assert f"{backbones} imports timm_is_not_here, which this Python does not have" in err
    assert f"{sys.executable} -m pip install timm_is_not_here" in err


def test_mxnet_next_to_a_numpy_it_cannot_import_with_is_named(tmp_path: Path, monkeypatch) -> None:
    root = _copy_of_host(tmp_path)
    (root / "dataset.py").write_text("import mxnet\n" + (root / "dataset.py").read_text())
    fake = tmp_path / "site" / "mxnet"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(fake.parent))
    monkeypatch.setattr(np, "__version__", "1.26.4")
    with pytest.raises(HostEnvironmentError, match=r"mxnet 1.9.1 fails to import with numpy 1.26.4 .*"
                                                   r'-m pip install "numpy<1.24"'):
        check_host_environment(check_checkout(root))
    monkeypatch.setattr(np, "__version__", "1.23.5")
    check_host_environment(check_checkout(root))


# ------------------------------------------------------------------ the config

def test_the_dataset_is_checked_against_num_classes_once_before_the_host_starts(data: Dict[str, Path]) -> None:
    """Our head trusts the host loader's labels; a wrong num_classes stops with the data side's message."""
    rec = f"rec={data['rec']}"
    check_host_data(load_host_config(JOB, [rec, *_distill(data)]))  # 16 identities, num_classes 16
    with pytest.raises(DataError, match=r"num_classes = 15, but .* has 16 identities.*num_classes=16"):
        check_host_data(load_host_config(JOB, [rec, *_distill(data), "num_classes=15"]))
    check_host_data(load_host_config(JOB, [rec, "num_classes=15"]))  # no distill: the host runs as it is


def test_config_keeps_our_checks_and_leaves_host_keys_to_the_host(tmp_path: Path) -> None:
    run = load_host_config(JOB, ["network=my_own_net", "dali=True", "distill=adadistill",
                                 "teacher_network=tiny_resnet", "teacher_weights=t.pt"])
    assert run.config_name == "tiny_host" and run.job_config.network == "my_own_net" and run.job_config.dali
    assert run.distill.distill == "adadistill" and run.distill.seed == 2048
    assert "device" not in run.job_config  # only the file's keys and --set reach the host
    assert load_host_config(JOB).distill is None
    with pytest.raises(ConfigError, match="lr_power = 2.0: host-train runs your train_v2.py"):
        load_host_config(JOB, ["lr_power=2"])
    with pytest.raises(ConfigError, match="unknown key 'distil'"):
        load_host_config(JOB, ["distil=adadistill"])
    with pytest.raises(ConfigError, match="teacher_weights"):
        load_host_config(JOB, ["distill=adadistill", "teacher_network=tiny_resnet"])
    base = tmp_path / "base.py"
    base.write_text(JOB.read_text())
    with pytest.raises(ConfigError, match="would replace the host's configs/base.py"):
        load_host_config(base)


# ------------------------------------------------------------------ the registered pieces

def _settings(distill: str, **extra) -> DistillSettings:
    values = dict(distill=distill, alpha="weighted", feature_kd_weight=1.0, teacher_network="tiny_resnet",
                  teacher_weights=None, teacher_classifier=None, teacher_dtype="fp32",
                  teacher_channels_last=False, seed=0, embedding_size=64, num_classes=16)
    return DistillSettings(**{**values, **extra})


def _host_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    assert labels.shape == (logits.shape[0], 1)  # the host's margin indexes (N, 1) labels
    return CombinedMarginLoss(64.0, 1.0, 0.5, 0.0)(logits, labels.view(-1))


@pytest.mark.parametrize("distill", ["adadistill", "feature_kd", "arcdistill"])
def test_registered_head_runs_the_host_call(tmp_path: Path, data, distill: str) -> None:
    header = tmp_path / "header.pth"
    torch.save({"kernel": torch.randn(64, 16)}, header)
    settings = _settings(distill, teacher_weights=str(data["teacher"]),
                         teacher_classifier=str(header) if distill == "arcdistill" else None)
    registration = HostRegistration(settings, load_distill_parts(settings, torch.device("cpu")), get_model)
    student = registration.get_model("tiny_mfn", dropout=0.0, fp16=False, num_features=64)
    keys = set(student.state_dict())
    head = registration.partial_fc(_host_margin, 64, 16, 1.0, False)
    images, labels = torch.randn(4, 3, 112, 112), torch.tensor([0, 1, 2, 3])
    loss = head(student(images), labels)  # the host's call: module_partial_fc(embeddings, labels)
    loss.backward()
    assert torch.isfinite(loss) and set(student.state_dict()) == keys  # the teacher is not in the student
    assert any(p.grad is not None for p in student.parameters())
    if distill == "adadistill":
        assert set(head.state_dict()) == {"weight", "visited"} and not list(head.parameters())
        assert {"distill/alpha", "distill/centre_teacher_cos"} <= set(registration.stats())
        with pytest.raises(RuntimeError, match="without a training-mode student forward"):
            head(student.eval()(images), labels)


def test_host_margin_gets_labels_as_a_column() -> None:
    seen = {}
    margin = HostMargin(lambda logits, labels: seen.setdefault("shape", labels.shape) and logits)
    margin(torch.zeros(3, 5), torch.tensor([0, -1, 4]))
    assert seen["shape"] == (3, 1)


def test_teacher_feed_skips_eval_forwards() -> None:
    teacher = torch.nn.Flatten()
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    feed = TeacherFeed(teacher)
    student = torch.nn.Identity()
    student.register_forward_hook(feed.on_student_forward)
    student.eval()(torch.zeros(2, 3))
    assert calls == [] and feed.pending is None
    student.train()(torch.zeros(2, 3))
    assert feed.take().shape == (2, 3) and feed.pending is None


def test_tensorboard_tap_adds_our_scalars_next_to_the_loss(tmp_path: Path) -> None:
    from torch.utils import tensorboard
    original = tensorboard.SummaryWriter
    with tap_summary_writer(lambda: {"distill/alpha": torch.tensor(0.25)}, resume=False):
        writer = tensorboard.SummaryWriter(log_dir=str(tmp_path))
        writer.add_scalar("learning_rate", 0.1, 3)
        writer.add_scalar("loss", 40.0, 3)
        writer.close()
    assert tensorboard.SummaryWriter is original
    logged = scalars(tmp_path)
    assert logged["distill/alpha"] == {3: 0.25} and logged["loss"] == {3: 40.0}


def test_tensorboard_tap_purges_the_steps_after_the_resumed_checkpoint(tmp_path: Path) -> None:
    from torch.utils import tensorboard
    torch.save({"epoch": 1, "global_step": 4}, tmp_path / "checkpoint_gpu_0.pt")  # what the host resumes from
    stopped = tensorboard.SummaryWriter(log_dir=str(tmp_path / "tensorboard"))  # a run stopped after step 6
    for step in range(1, 7):
        stopped.add_scalar("loss", 1.0, step)
    stopped.close()
    with tap_summary_writer(None, resume=True):
        resumed = tensorboard.SummaryWriter(log_dir=str(tmp_path / "tensorboard"))  # as the host creates it
        for step in range(5, 9):
            resumed.add_scalar("loss", 2.0, step)
        resumed.close()
    assert logged_steps(tmp_path) == {"loss": list(range(1, 9))}
    assert scalars(tmp_path)["loss"] == {**dict.fromkeys(range(1, 5), 1.0), **dict.fromkeys(range(5, 9), 2.0)}


# ------------------------------------------------------------------ runs

def test_without_distill_the_host_runs_as_is(tmp_path: Path, data) -> None:
    out = host_run(data, tmp_path / "plain")
    assert "head: PartialFC_V2" in (out / "training.log").read_text()
    assert set(shard(out, 0)["state_dict_softmax_fc"]) == {"weight"}
    assert not any(tag.startswith("distill/") for tag in scalars(out))


def test_distillation_keeps_the_host_conventions(tmp_path: Path, data, clean_host_modules) -> None:
    """AdamW with a parameter-free head, fp16 gradient compression, ArcFace: the host's defaults."""
    out = host_run(data, tmp_path / "ada", *_distill(data), "optimizer=adamw")
    assert "head: AdaDistillHead" in (out / "training.log").read_text()
    state = shard(out, 0)
    assert set(state) == {"epoch", "global_step", "state_dict_backbone", "state_dict_softmax_fc",
                          "state_optimizer", "state_lr_scheduler"}
    assert set(state["state_dict_softmax_fc"]) == {"weight", "visited"}
    assert bool(state["state_dict_softmax_fc"]["visited"].all())
    assert [len(g["params"]) for g in state["state_optimizer"]["param_groups"]][1] == 0
    checkout = check_checkout(HOST)
    with host_import_path(checkout):
        student = import_host_module(checkout, "backbones").get_model("tiny_cnn", num_features=64)
    assert set(student.state_dict()) == set(torch.load(out / "model.pt"))  # the student alone, no teacher
    student.load_state_dict(torch.load(out / "model.pt"), strict=True)
    logged = scalars(out)
    assert set(logged["distill/alpha"]) == set(logged["loss"]) == set(range(2, 9))


@pytest.mark.slow
def test_distillation_equals_our_trainer(tmp_path: Path, data) -> None:
    host = host_run(data, tmp_path / "host", *OUR_STUDENT, *_distill(data), *EXACT,
                    env={"HOST_SHAPED_COMM_HOOK": "none"}, checkout=with_our_parts(tmp_path))
    ours = our_run(data, tmp_path / "ours", *_distill(data), *EXACT)
    _assert_same_result(host, ours, world_size=1, steps=8)


def _assert_same_result(host: Path, ours: Path, world_size: int, steps: int) -> None:
    for rank in range(world_size):
        a, b = shard(host, rank), shard(ours, rank)
        for key in ("state_dict_softmax_fc", "state_dict_backbone"):
            for name, value in a[key].items():
                assert torch.equal(value, b[key][name]), f"rank {rank} {key}.{name} differs"
    a, b = scalars(host), scalars(ours)
    # The host's first logged loss (step 2) averages steps 1 and 2; later ones are single steps.
    for step in range(3, steps + 1):
        assert a["loss"][step] == b["loss"][step]
    for tag in ("distill/alpha", "distill/centre_teacher_cos", "distill/student_teacher_cos"):
        for step in range(2, steps + 1):
            assert a[tag][step] == b[tag][step], f"{tag} at step {step}"


def test_adaface_margin_replaces_the_host_margin_also_without_distill(tmp_path: Path, data) -> None:
    """The host's Partial FC cannot pass the feature norms: margin = 'adaface' registers our head."""
    out = host_run(data, tmp_path / "adaface", "margin=adaface")
    assert "head: PartialFC\n" in (out / "training.log").read_text()  # ours, not the host's PartialFC_V2
    head = shard(out, 0)["state_dict_softmax_fc"]
    assert set(head) == {"weight", "margin_softmax.margin_loss.norm_mean", "margin_softmax.margin_loss.norm_std"}
    assert set(scalars(out)["margin/norm_mean"]) == set(range(2, 9))


@pytest.mark.slow
def test_adaface_distillation_equals_our_trainer(tmp_path: Path, data) -> None:
    """AdaDistill with the AdaFace margin: centres and running norm statistics bit-identical."""
    args = (*_distill(data), "margin=adaface")
    host = host_run(data, tmp_path / "host", *OUR_STUDENT, *args, env={"HOST_SHAPED_COMM_HOOK": "none"},
                    checkout=with_our_parts(tmp_path))
    ours = our_run(data, tmp_path / "ours", *args)
    assert "margin_softmax.margin_loss.norm_std" in shard(host, 0)["state_dict_softmax_fc"]
    _assert_same_result(host, ours, world_size=1, steps=8)


@pytest.mark.slow
def test_two_processes_with_and_without_distill(tmp_path: Path, data) -> None:
    plain = host_run(data, tmp_path / "plain", nproc=2)
    assert {0, 1} == {r for r in range(2) if (plain / f"checkpoint_gpu_{r}.pt").is_file()}
    host = host_run(data, tmp_path / "host", *OUR_STUDENT, *_distill(data), *EXACT, nproc=2,
                    env={"HOST_SHAPED_COMM_HOOK": "none"}, checkout=with_our_parts(tmp_path))
    ours = our_run(data, tmp_path / "ours", *_distill(data), *EXACT, nproc=2)
    _assert_same_result(host, ours, world_size=2, steps=4)


@pytest.mark.slow
def test_host_resume_after_a_stop_shows_each_step_once(tmp_path: Path, data) -> None:
    """A host run stopped in epoch 2 (after logging it, before its end-of-epoch save) and resumed."""
    out = host_run(data, tmp_path / "run")
    epoch_one = (out / "checkpoint_gpu_0.pt").read_bytes()  # global_step 8
    host_run(data, out, "resume=True", "num_epoch=2")  # logs steps 9-16, saves at 16
    (out / "checkpoint_gpu_0.pt").write_bytes(epoch_one)  # as if stopped before that save
    host_run(data, out, "resume=True", "num_epoch=2")  # steps 9-16 again
    # The host's CallBackLogging starts its timer at its first qualifying step, so each run logs
    # from its second step on: 2-8, then 10-16.
    assert logged_steps(out)["loss"] == [*range(2, 9), *range(10, 17)]


@pytest.mark.slow
def test_the_host_resume_loads_our_head_state(tmp_path: Path, data) -> None:
    """The host's resume reads `state_dict_softmax_fc` back into our head (strict load) and goes on."""
    out = host_run(data, tmp_path / "run", *_distill(data))
    host_run(data, out, *_distill(data), "resume=True", "num_epoch=2")
    state = shard(out, 0)
    assert (state["epoch"], state["global_step"]) == (2, 16)
    assert set(scalars(out)["distill/alpha"]) >= set(range(10, 17))
