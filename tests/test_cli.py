"""`adadistill` itself: the command table, the environment it sets, and how user errors are shown."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import numpy as np
import torch

import insightface_adadistill
from insightface_adadistill import cli
from insightface_adadistill.backbones import get_model
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.data.rec_tools import write_insightface_rec


def test_help_lists_every_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in cli.COMMANDS)


def test_a_mistyped_command_gets_the_closest_ones(capsys) -> None:
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err.startswith("adadistill: error: unknown command 'trian'; did you mean 'train'?")
    assert cli.main(["inspect"]) == 2
    assert "did you mean 'inspect-rec' or 'inspect-cache'?" in capsys.readouterr().err
    assert cli.main(["--versoin"]) == 2
    assert "unknown option '--versoin'; did you mean '--version'?" in capsys.readouterr().err
    assert cli.main(["xyzzy"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_version_is_the_package_version(capsys) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"adadistill {insightface_adadistill.__version__}\n"
    assert "version = attr: insightface_adadistill.__version__" in (REPO / "setup.cfg").read_text()


def _options(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_option_of_every_command_has_help_that_shows_its_default(name: str) -> None:
    parser = cli.COMMANDS[name].build_parser()
    text = " ".join(parser.format_help().split())  # unwrapped
    assert parser.description and parser.description.rstrip().endswith("."), parser.description
    for action in _options(parser):
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        if not (action.default is None or action.default is False or action.default == []):
            shown = " ".join(parser._get_formatter()._expand_help(action).split())
            assert "default" in shown and shown in text, (name, action.dest, shown)


def test_sets_passive_openmp_waiting_unless_set(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# ---- user errors: one line on stderr, no traceback -------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny_cpu.py")


def _run(argv: List[str], capsys) -> Tuple[int, str]:
    """cli.main as the console script runs it; an exception escaping it is what prints a traceback."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    """A small weights file, a .rec dataset, a folder the demo did not write, and a plain file."""
    root = tmp_path_factory.mktemp("cli")
    torch.save(get_model("tiny_mfn", num_features=32).state_dict(), root / "mfn.pt")
    face = encode_jpeg(np.full((112, 112, 3), 128, np.uint8), 90)
    write_insightface_rec(root / "data", [(0, face), (1, face)], 2)
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine\n")
    (root / "plain.txt").write_text("not a model\n")
    write_insightface_rec(root / "broken", [(0, face), (1, b"\xff\xd8 not a jpeg")], 2)
    return {"root": root, "weights": root / "mfn.pt", "rec": root / "data", "foreign": root / "foreign",
            "plain": root / "plain.txt", "broken": root / "broken"}


BAD_INVOCATIONS = {
    "train: unknown key": ["train", TINY, "--set", "lrr=0.1"],
    "train: no CONFIG": ["train", "--set", "lr=0.1"],
    "train: missing rec": ["train", TINY, "--set", "rec={root}/nowhere", "output={root}/run1"],
    "train: rec is train.rec": ["train", TINY, "--set", "rec={rec}/train.rec", "output={root}/run2"],
    "train: missing teacher": ["train", TINY, "--set", "distill=adadistill", "teacher_network=tiny_resnet",
                               "teacher_weights={root}/nope.pt", "output={root}/run3"],
    "train: missing val target": ["train", TINY, "--set", "rec={rec}", "num_classes=2", "num_image=2",
                                  "batch_size=2", "val_targets=lfw", "output={root}/run4"],
    "train: undecodable image in a worker": ["train", TINY, "--set", "rec={broken}", "num_classes=2",
                                             "num_image=2", "batch_size=2", "num_workers=1", "output={root}/run5"],
    "config: no such recipe": ["config", "no_such_recipe"],
    "config: bad value": ["config", TINY, "--set", "lr=-1"],
    "config: world size 0": ["config", TINY, "--world-size", "0"],
    "demo: max steps 0": ["demo", "--max-steps", "0", "--out", "{root}/demo0"],
    "verify: negative batch size": ["verify", "--batch-size", "-2", "--network", "tiny_mfn", "--model", "m.pt",
                                    "x.bin"],
    "demo: foreign folder": ["demo", "--out", "{foreign}", "--preset", "quick"],
    "verify: missing weights": ["verify", "x.bin", "--network", "tiny_mfn", "--model", "{root}/nope.pt"],
    "verify: not a weights file": ["verify", "x.bin", "--network", "tiny_mfn", "--model", "{plain}"],
    "verify: wrong network": ["verify", "x.bin", "--network", "tiny_resnet", "--model", "{weights}"],
    "verify: missing .bin": ["verify", "{root}/nope.bin", "--network", "tiny_mfn", "--embedding-size", "32",
                             "--model", "{weights}"],
    "eval-ijb: missing onnx": ["eval-ijb", "--onnx", "{root}/nope.onnx", "--image-path", "{root}"],
    "eval-ijb: no IJB folder": ["eval-ijb", "--network", "tiny_mfn", "--embedding-size", "32", "--model-prefix",
                                "{weights}", "--image-path", "{root}/nowhere", "--workers", "0"],
    "export-onnx: missing weights": ["export-onnx", "{root}/m.onnx", "--network", "tiny_mfn", "--model",
                                     "{root}/nope.pt"],
    "export-onnx: output is the weights": ["export-onnx", "{weights}", "--network", "tiny_mfn", "--model",
                                           "{weights}"],
    "check-onnx: missing model": ["check-onnx", "{root}/nope.onnx"],
    "make-rec: missing source": ["make-rec", "{root}/nowhere", "{root}/out"],
    "make-synthetic: no identities": ["make-synthetic", "{root}/synth", "--train-ids", "0"],
    "inspect-rec: missing folder": ["inspect-rec", "{root}/nowhere"],
}


@pytest.mark.parametrize("case", sorted(BAD_INVOCATIONS))
def test_user_errors_print_one_message_and_no_traceback(case: str, files, capsys) -> None:
    argv = [arg.format(**files) for arg in BAD_INVOCATIONS[case]]
    rc, err = _run(argv, capsys)
    assert rc in (1, 2), err
    assert f"adadistill {argv[0]}: error: " in err and "Traceback" not in err, err


def test_debug_flag_and_env_show_the_traceback(monkeypatch, capsys) -> None:
    argv = ["config", "no_such_recipe"]
    assert _run(["--debug", *argv], capsys)[1].startswith("Traceback")
    monkeypatch.setenv("ADADISTILL_DEBUG", "1")
    rc, err = _run(argv, capsys)
    assert rc == 2 and "Traceback" in err and "adadistill config: error: " in err.splitlines()[-2] + err


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    def broken(argv):
        raise KeyError("a bug")

    monkeypatch.setattr(cli.COMMANDS["config"], "main", broken)
    with pytest.raises(KeyError):
        cli.main(["config", TINY])


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys) -> None:
    def interrupted(argv):
        raise KeyboardInterrupt("second Ctrl-C: aborted without saving")

    monkeypatch.setattr(cli.COMMANDS["train"], "main", interrupted)
    rc, err = _run(["train", TINY], capsys)
    assert rc == 130 and err == "adadistill train: error: interrupted: second Ctrl-C: aborted without saving\n"


def test_set_before_the_config_path_is_accepted(capsys) -> None:
    assert cli.main(["config", "--set", "lr=0.2", "fp16=false", TINY]) == 0
    out = capsys.readouterr().out
    assert ": lr                       0.2" in out and ": network                  tiny_mfn" in out
    # cache-teacher reads CONFIG the same way: here it gets as far as asking for the teacher
    rc, err = _run(["cache-teacher", "--set", "lr=0.2", TINY], capsys)
    assert rc == 2 and "tiny_cpu.py: cache-teacher needs the teacher" in err, err


@pytest.mark.slow
def test_torchrun_worker_prints_only_the_message(tmp_path) -> None:
    """Under torchrun the worker's error is one line (no `[rank0]:` traceback), and torchrun's own
    failure summary repeats that line instead of pointing to its traceback documentation."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node=2", "-m", "insightface_adadistill", "train", TINY, "--set",
           f"output={tmp_path / 'run'}", "distill=adadistill", "teacher_network=tiny_resnet",
           f"teacher_weights={tmp_path / 'nope.pt'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "adadistill train: error: teacher weights" in proc.stderr
    assert "[rank0]:" not in proc.stderr and "insightface_adadistill/" not in proc.stderr, proc.stderr
    assert "traceback : adadistill train: error: teacher weights" in proc.stderr


def test_a_closed_pipe_is_not_a_traceback() -> None:
    """`adadistill config CONFIG | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    proc = subprocess.run(f"{sys.executable} -m insightface_adadistill config {TINY} | head -1", shell=True,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_schedule_and_optimizer_refusals_are_user_errors() -> None:
    """They name config keys, so the CLI shows them as one line, not as a bug's traceback."""
    from insightface_adadistill.errors import UserError
    from insightface_adadistill.training.optim import build_optimizer
    from insightface_adadistill.training.schedule import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(UserError, match="'cosine'"):
        build_scheduler(optimizer, "cosine")
    with pytest.raises(UserError, match="'lamb'"):
        build_optimizer("lamb", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1, momentum=0.9,
                        weight_decay=0.0)
