"""The output contract of every writing command (docs/safety.md#outputs), one table row per command.

Each row says how the command names its output and what it writes there. For every row: an
existing file where the output goes is refused with one line naming it; a folder of another kind
is refused, naming the flag that allows it (or none, where nothing may be replaced), and is left
byte for byte as it was, hidden files included; and with the flag the command writes. The commands
run in-process through `cli.main`, as the console script runs them.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

from insightface_adadistill import cli
from insightface_adadistill.backbones import get_model
from insightface_adadistill.data.decode import encode_jpeg
from insightface_adadistill.outputs import CLAIM_FILES, KIND_FILE, LOCK_FILE, folder_kind

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny_cpu.py")
HOST = REPO / "tests" / "host_shaped"
NET = ["--network", "tiny_mfn", "--embedding-size", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    """Tiny inputs: weights, a synthetic dataset (.rec, .bin, IJB folder), an image folder, an ONNX
    model, and one folder of each kind to be refused (a finished run, a dataset made by im2rec)."""
    root = tmp_path_factory.mktemp("contract")
    torch.save(get_model("tiny_mfn", num_features=32).state_dict(), root / "mfn.pt")
    assert cli.main(["make-synthetic", str(root / "synth"), "--train-ids", "2", "--images-per-id", "2",
                     "--heldout-ids", "2", "--val-pairs", "10", "--difficulty", "easy"]) == 0
    faces = root / "faces"
    for identity in range(2):
        (faces / f"id{identity}").mkdir(parents=True)
        (faces / f"id{identity}" / "0.jpg").write_bytes(encode_jpeg(np.full((112, 112, 3), 60 * identity,
                                                                            np.uint8), 90))
    assert cli.main(["export-onnx", str(root / "mfn.onnx"), *NET, "--model", str(root / "mfn.pt"), "--opset", "13"]) == 0
    run = root / "kinds" / "run"  # as `adadistill train` leaves it, lock and kind record included
    run.mkdir(parents=True)
    shutil.copy(root / "mfn.pt", run / "model.pt")
    (run / "training.log").write_text("Training: 2026-01-01 00:00:00,000-finished\n")
    (run / KIND_FILE).write_text('{"kind": "run", "command": "train"}\n')
    (run / LOCK_FILE).write_text('{"job": "train", "pid": 1, "host": "h", "started": "then"}\n')
    dataset = root / "kinds" / "dataset"  # no kind record: recognised by train.rec
    shutil.copytree(root / "synth" / "train", dataset)
    return {"root": root, "weights": root / "mfn.pt", "rec": root / "synth" / "train",
            "bin": root / "synth" / "train" / "synth_val.bin", "ijb": root / "synth" / "IJBC", "faces": faces,
            "onnx": root / "mfn.onnx", "run": run, "dataset": dataset}


@dataclass(frozen=True)
class Row:
    """One writing command: its argv for an output path, and what it writes."""

    argv: Callable[[Path, Dict[str, Path]], List[str]]
    writes: str  # "folder" or "file"
    kind: Optional[str] = None  # the kind of folder it makes
    other: str = "run"  # the kind of folder used to show a refusal
    flag: Optional[List[str]] = None  # the argv that allows replacing; None: nothing may be replaced
    slow: bool = False


ROWS: Dict[str, Row] = {
    "train": Row(lambda out, f: ["train", TINY, "--set", f"output={out}", "max_steps=1", "progress_bar=false"],
                 "folder", "run", other="dataset", flag=["overwrite=True"]),
    "host-train": Row(lambda out, f: ["host-train", str(HOST), str(HOST / "configs" / "tiny_host.py"), "--set",
                                      f"output={out}", f"rec={f['rec']}"], "folder", "run", other="dataset"),
    "cache-teacher": Row(lambda out, f: ["cache-teacher", TINY, "--set", "distill=adadistill",
                                         "teacher_network=tiny_mfn", f"teacher_weights={f['weights']}",
                                         "embedding_size=32", "--out", str(out)], "folder", "cache"),
    "convert-host-checkpoint": Row(lambda out, f: ["convert-host-checkpoint", str(out)], "folder", "run",
                                   other="dataset"),
    "make-synthetic": Row(lambda out, f: ["make-synthetic", str(out), "--train-ids", "2", "--images-per-id", "1",
                                          "--heldout-ids", "2", "--val-pairs", "2", "--difficulty", "easy"],
                          "folder", "dataset", flag=["--overwrite"]),
    "make-rec": Row(lambda out, f: ["make-rec", str(f["faces"]), str(out), "--workers", "1"], "folder", "dataset",
                    flag=["--overwrite"]),
    "eval-ijb": Row(lambda out, f: ["eval-ijb", *NET, "--model-prefix", str(f["weights"]), "--image-path",
                                    str(f["ijb"]), "--result-dir", str(out.parent), "--job", out.name,
                                    "--workers", "0", "--batch-size", "8", "--device", "cpu"],
                    "folder", "evaluation", flag=["--overwrite"]),
    "demo": Row(lambda out, f: ["demo", "--out", str(out), "--preset", "quick", "--device", "cpu",
                                "--max-steps", "1"], "folder", "demo", flag=["--overwrite"], slow=True),
    "export-onnx": Row(lambda out, f: ["export-onnx", str(out), *NET, "--model", str(f["weights"]), "--opset", "13"], "file",
                       flag=["--overwrite"]),
    "verify": Row(lambda out, f: ["verify", str(f["bin"]), *NET, "--model", str(f["weights"]), "--json", str(out),
                                  "--device", "cpu"], "file", flag=["--overwrite"]),
    "check-onnx": Row(lambda out, f: ["check-onnx", str(f["onnx"]), "--provider", "cpu", "--json", str(out)],
                      "file", flag=["--overwrite"]),
    # its output is <dataset>/train.idx: the tests put the file (or folder) there in a copy of the dataset
    "inspect-rec --rebuild-index": Row(lambda out, f: ["inspect-rec", str(out.parent), "--rebuild-index"], "file",
                                       flag=["--overwrite"]),
}
WRITERS = sorted(ROWS)


def run(argv: List[str], capsys) -> Tuple[int, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def snapshot(path: Path) -> Dict[str, object]:
    """Every file under `path` (hidden ones too) by its sha256, and every folder."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))}


def output_in(tmp_path: Path, name: str, files: Dict[str, Path]) -> Path:
    """Where the row's output goes inside a fresh folder (inspect-rec: train.idx of a dataset copy)."""
    if name.startswith("inspect-rec"):
        data = Path(shutil.copytree(files["rec"], tmp_path / "data"))
        (data / "train.idx").unlink()
        return data / "train.idx"
    return tmp_path / ("out.json" if name in ("verify", "check-onnx") else
                       "out.onnx" if name == "export-onnx" else "out")


def with_flag(name: str, argv: List[str]) -> List[str]:
    flag = ROWS[name].flag
    return [*argv, *flag] if flag else argv


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adadistill {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def params(only_flagged: bool = False):
    return [pytest.param(name, marks=[pytest.mark.slow] if ROWS[name].slow else [], id=name)
            for name in WRITERS if not only_flagged or ROWS[name].flag]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in WRITERS])
def test_an_existing_file_is_refused_and_kept(name, files, tmp_path, capsys) -> None:
    row, out = ROWS[name], output_in(tmp_path, name, files)
    out.write_text("precious\n")
    rc, err = run(row.argv(out, files), capsys)
    line = one_error_line(err, name.split()[0])
    assert rc == 2 and str(out) in line
    if row.writes == "file":
        assert "exists" in line and "--overwrite" in line
    else:
        assert "is a file, not a folder" in line
    assert out.read_text() == "precious\n" and {p.name for p in out.parent.iterdir()} & set(CLAIM_FILES) == set()


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in WRITERS])
def test_a_folder_of_another_kind_is_refused_and_left_byte_identical(name, files, tmp_path, capsys) -> None:
    row, out = ROWS[name], output_in(tmp_path, name, files)
    shutil.copytree(files[row.other], out)
    before = snapshot(out)
    rc, err = run(row.argv(out, files), capsys)
    line = one_error_line(err, name.split()[0])
    assert rc == 2 and str(out) in line
    if row.writes == "file":
        assert "is a folder" in line
    else:
        named = {"run": "a training run", "dataset": "a dataset"}[row.other]
        assert f"holds {named}" in line and "choose another folder" in line
        assert (" ".join(row.flag) in line) if row.flag else ("pass" not in line), line
    assert snapshot(out) == before


@pytest.mark.parametrize("name", params(only_flagged=True))
def test_the_flag_allows_it(name, files, tmp_path, capsys) -> None:
    row, out = ROWS[name], output_in(tmp_path, name, files)
    if row.writes == "file":
        out.write_text("old\n")
    else:
        shutil.copytree(files[row.other], out)
    rc, err = run(with_flag(name, row.argv(out, files)), capsys)
    assert rc == 0, err
    if row.writes == "file":
        assert out.read_bytes() != b"old\n"
    else:
        assert folder_kind(out) == row.kind
    assert not [p for p in out.parent.rglob("*") if ".adadistill-staging." in p.name or p.name.endswith(".tmp")]


def test_every_writing_command_has_a_row() -> None:
    from insightface_adadistill.outputs import KIND_OF_COMMAND

    assert set(KIND_OF_COMMAND) <= {name.split()[0] for name in ROWS}
    assert all(ROWS[name].kind == kind for name, kind in KIND_OF_COMMAND.items())


def test_eval_ijb_keeps_each_models_results_apart(files, tmp_path, capsys) -> None:
    """Two models evaluated with the defaults land in two folders; a second model forced into the
    first one's folder is refused, and the same model may be evaluated again."""
    other = tmp_path / "student" / "model.pt"
    other.parent.mkdir()
    torch.manual_seed(5)
    torch.save(get_model("tiny_mfn", num_features=32).state_dict(), other)
    base = ["eval-ijb", *NET, "--image-path", str(files["ijb"]), "--result-dir", str(tmp_path), "--workers", "0",
            "--batch-size", "8", "--device", "cpu"]
    assert run([*base, "--model-prefix", str(files["weights"])], capsys)[0] == 0
    assert run([*base, "--model-prefix", str(other)], capsys)[0] == 0
    first, second = tmp_path / f"{files['weights'].parent.name}_mfn", tmp_path / "student_model"
    assert (first / "ijbc.json").is_file() and (second / "ijbc.json").is_file()
    before = snapshot(first)
    rc, err = run([*base, "--model-prefix", str(other), "--job", first.name], capsys)
    line = one_error_line(err, "eval-ijb")
    assert rc == 2 and "already holds the IJBC results of" in line and "--overwrite" in line
    assert snapshot(first) == before
    assert run([*base, "--model-prefix", str(files["weights"])], capsys)[0] == 0  # the same model again


def test_a_refused_train_leaves_a_host_run_as_it_was(files, tmp_path, capsys) -> None:
    """The folder holds an arcface_torch run (no kind record, no lock): `train` without resume is
    refused, and neither training.log nor a lock or kind file is touched or added."""
    out = tmp_path / "host_run"
    out.mkdir()
    shutil.copy(files["weights"], out / "checkpoint_gpu_0.pt")
    (out / "training.log").write_text("Training: the host's log\n")
    before = snapshot(out)
    rc, err = run(ROWS["train"].argv(out, files), capsys)
    assert rc == 2 and "already holds a run" in one_error_line(err, "train")
    assert snapshot(out) == before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ---- every command: bad paths, a folder for a file and the reverse, CUDA that is not there -------

BAD_INPUTS: Dict[str, List[str]] = {
    "train: rec missing": ["train", TINY, "--set", "rec={root}/nowhere", "output={tmp}/r"],
    "train: rec is a file": ["train", TINY, "--set", "rec={weights}", "output={tmp}/r"],
    "train: teacher_weights is a folder": ["train", TINY, "--set", "distill=adadistill", "teacher_network=tiny_mfn",
                                           "teacher_weights={root}", "output={tmp}/r"],
    "train: teacher_weights is not a torch file": ["train", TINY, "--set", "distill=adadistill",
                                                   "teacher_network=tiny_mfn", "teacher_weights={plain}",
                                                   "output={tmp}/r"],
    "train: teacher_weights pickles a model": ["train", TINY, "--set", "distill=adadistill",
                                               "teacher_network=tiny_mfn", "teacher_weights={pickled}",
                                               "output={tmp}/r"],
    "train: device=cuda": ["train", TINY, "--set", "device=cuda", "output={tmp}/r"],
    "train: num_image is not the data's": ["train", TINY, "--set", "rec={rec}", "num_classes=2", "num_image=6",
                                           "batch_size=2", "output={tmp}/r"],
    "host-train: checkout missing": ["host-train", "{root}/nowhere", TINY],
    "host-train: checkout is a file": ["host-train", "{plain}", TINY],
    "host-train: CONFIG is a folder": ["host-train", str(HOST), "{root}"],
    "config: CONFIG missing": ["config", "{root}/nowhere.py"],
    "config: CONFIG is a folder": ["config", "{root}"],
    "cache-teacher: teacher_weights is a folder": ["cache-teacher", TINY, "--set", "distill=adadistill",
                                                   "teacher_network=tiny_mfn", "teacher_weights={root}",
                                                   "--out", "{tmp}/c"],
    "cache-teacher: device=cuda": ["cache-teacher", TINY, "--set", "distill=adadistill", "teacher_network=tiny_mfn",
                                   "teacher_weights={weights}", "embedding_size=32", "device=cuda", "--out", "{tmp}/c"],
    "demo: --device cuda": ["demo", "--out", "{tmp}/d", "--preset", "quick", "--device", "cuda"],
    "verify: BIN missing": ["verify", "{root}/nope.bin", *NET, "--model", "{weights}", "--device", "cpu"],
    "verify: BIN is a folder": ["verify", "{root}", *NET, "--model", "{weights}", "--device", "cpu"],
    "verify: --model is a folder": ["verify", "{bin}", *NET, "--model", "{root}", "--device", "cpu"],
    "verify: --model is not a torch file": ["verify", "{bin}", *NET, "--model", "{plain}", "--device", "cpu"],
    "verify: --device cuda": ["verify", "{bin}", *NET, "--model", "{weights}", "--device", "cuda"],
    "eval-ijb: --model-prefix missing": ["eval-ijb", *NET, "--model-prefix", "{root}/nope.pt", "--image-path",
                                         "{ijb}", "--result-dir", "{tmp}"],
    "eval-ijb: --model-prefix is a folder": ["eval-ijb", *NET, "--model-prefix", "{root}", "--image-path", "{ijb}",
                                             "--result-dir", "{tmp}"],
    "eval-ijb: --image-path is a file": ["eval-ijb", *NET, "--model-prefix", "{weights}", "--image-path", "{plain}",
                                         "--result-dir", "{tmp}", "--workers", "0", "--device", "cpu"],
    "eval-ijb: --device cuda": ["eval-ijb", *NET, "--model-prefix", "{weights}", "--image-path", "{ijb}",
                                "--result-dir", "{tmp}", "--device", "cuda"],
    "export-onnx: --model missing": ["export-onnx", "{tmp}/m.onnx", *NET, "--model", "{root}/nope.pt"],
    "export-onnx: --model is a folder": ["export-onnx", "{tmp}/m.onnx", *NET, "--model", "{root}"],
    "check-onnx: model missing": ["check-onnx", "{root}/nope.onnx"],
    "check-onnx: a folder without a model": ["check-onnx", "{tmp}"],
    "make-rec: SRC missing": ["make-rec", "{root}/nowhere", "{tmp}/out"],
    "make-rec: SRC is a file": ["make-rec", "{plain}", "{tmp}/out"],
    "inspect-rec: missing": ["inspect-rec", "{root}/nowhere"],
    "inspect-rec: a file that is no .rec": ["inspect-rec", "{plain}"],
    "inspect-cache: missing": ["inspect-cache", "{root}/nowhere"],
    "inspect-cache: a file": ["inspect-cache", "{plain}"],
    "convert-host-checkpoint: no host files": ["convert-host-checkpoint", "{tmp}/empty"],
}


@pytest.fixture(scope="module")
def bad_files(files) -> Dict[str, Path]:
    root = files["root"]
    (root / "plain.txt").write_text("not a model\n")
    torch.save(torch.nn.Linear(2, 2), root / "pickled.pt")  # a whole pickled module: weights_only refuses it
    return {**files, "plain": root / "plain.txt", "pickled": root / "pickled.pt"}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_message_without_a_traceback(case, bad_files, tmp_path, capsys, monkeypatch) -> None:
    """One message (a config error lists its problems on indented lines below it), exit status
    != 0, never torch's text; nothing left behind but a run's training.log, which holds the error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    argv = [arg.format(tmp=tmp_path, **bad_files) for arg in BAD_INPUTS[case]]
    rc, err = run(argv, capsys)
    assert rc not in (0, None)
    first, *rest = err.strip().splitlines()
    assert first.startswith(f"adadistill {argv[0]}: error: ") and all(line.startswith(" ") for line in rest), err
    assert "Traceback" not in err and "weights_only=False" not in err
    if "cuda" in case:
        assert "no CUDA device" in err or "sees no GPU" in err, err
    if "is a folder" in case:
        assert "is a folder" in err, err
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    if argv[0] == "train" and "cuda" not in case:  # claimed before the error: the log says why it stopped
        assert left == ["r", "r/.adadistill-output.json", "r/.adadistill.lock", "r/training.log"], left
        assert f"error: {first.split(': error: ', 1)[1]}" in (tmp_path / "r" / "training.log").read_text()
    else:
        assert left == [], "a failed command left files behind"


def test_a_run_ends_with_a_summary_in_the_log_and_on_the_terminal(bad_files, tmp_path, capsys) -> None:
    out, rec = tmp_path / "run", bad_files["rec"]
    assert cli.main(["train", TINY, "--set", f"output={out}", f"rec={rec}", "num_classes=2", "num_image=4",
                     "batch_size=2", "frequent=1", "max_steps=2", "val_targets=synth_val", "progress_bar=false"]) == 0
    log = (out / "training.log").read_text()
    printed = capsys.readouterr().out
    expected = ["finished after 0:00:", "global step 2 of ", "final loss ", "synth_val 0.",
                f"files: {out / 'training.log'}, {out / 'tensorboard'}", f"{out / 'model.pt'}",
                f"adadistill verify {rec / 'synth_val.bin'} --network tiny_mfn --embedding-size 64 --model "
                f"{out / 'model.pt'}",
                f"adadistill eval-ijb --network tiny_mfn --embedding-size 64 --model-prefix {out / 'model.pt'}",
                f"adadistill export-onnx {out / 'model.onnx'} --network tiny_mfn --embedding-size 64"]
    for text in expected:
        assert text in log and text in printed, text


def test_the_safety_page_names_tests_that_exist() -> None:
    """docs/safety.md names the test behind each rule; a renamed or removed test must show up here."""
    named = set(re.findall(r"`(test_\w+)`", (REPO / "docs" / "safety.md").read_text()))
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py")),
                             re.M))
    assert len(named) > 10 and named <= defined, sorted(named - defined)


def test_an_unfaithful_export_leaves_the_old_file(files, tmp_path, capsys, monkeypatch) -> None:
    """export-onnx checks the graph against PyTorch before its file replaces OUT.onnx."""
    from insightface_adadistill.export import onnx as onnx_export

    def unfaithful(*args, **kwargs):
        raise onnx_export.ExportError("onnxruntime differs from PyTorch")

    monkeypatch.setattr(onnx_export, "verify_onnx", unfaithful)
    out = tmp_path / "shipped.onnx"
    out.write_bytes(b"the model in production")
    rc, err = run(with_flag("export-onnx", ROWS["export-onnx"].argv(out, files)), capsys)
    assert rc == 1 and f"{out} was not written" in one_error_line(err, "export-onnx")
    assert out.read_bytes() == b"the model in production" and sorted(tmp_path.iterdir()) == [out]
