"""training/compile.py: in-place compile keeps every state_dict key; a platform that cannot compile
gets one CompileError; a compiled run matches an eager one and writes files an eager model loads."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from insightface_adadistill.backbones import get_model
from insightface_adadistill.commands.train import main
from insightface_adadistill.heads import HeadArgs, build_head, build_margin_loss
from insightface_adadistill.serialization import load_file
from insightface_adadistill.teacher.frozen import FrozenTeacher
from insightface_adadistill.training.checkpoint import sets as store
from insightface_adadistill.training.compile import CompileError, compile_step, explain_compile_failure
from insightface_adadistill.training.step import DistillStep

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny_cpu.py")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    yield
    torch._dynamo.reset()


def test_compile_step_keeps_modules_and_keys():
    student = get_model("tiny_mfn", num_features=64)
    teacher = FrozenTeacher(get_model("tiny_mfn", num_features=64))
    head = build_head("adadistill", HeadArgs(build_margin_loss((1.0, 0.5, 0.0)), 64, 10))
    step = DistillStep(student, head, teacher)
    keys = list(student.state_dict()), list(teacher.state_dict())
    assert compile_step(step, "reduce-overhead") is step
    assert step.student is student and step.__dict__["teacher"] is teacher  # compiled in place, not wrapped
    assert (list(student.state_dict()), list(teacher.state_dict())) == keys
    assert step.marks_cudagraph_steps and not DistillStep.marks_cudagraph_steps
    # the step is no Module: its teacher is an ordinary attribute no state_dict or DDP reaches through it
    assert not isinstance(step, nn.Module) and step.teacher is teacher


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) * 2


def test_backend_failure_becomes_one_clear_error():
    def no_compiler(graph, example_inputs):
        raise RuntimeError("Compiler: cc is not found")

    model = TwoLayers()
    model.compile(backend=no_compiler)
    with pytest.raises(CompileError, match=r"torch.compile failed on this platform .*cc is not found.*"
                                           r"compile = False"):
        with explain_compile_failure(True):
            model(torch.randn(3, 2))
    with pytest.raises(ValueError, match="unrelated"):  # anything else passes through unchanged
        with explain_compile_failure(True):
            raise ValueError("unrelated")


def _losses(output: Path) -> list[float]:
    return [float(v) for v in re.findall(r"Loss (\S+)", (output / "training.log").read_text())]


@pytest.mark.slow
def test_compiled_run_matches_eager_and_writes_eager_files(tmp_path: Path) -> None:
    """Same loss curve within float tolerance; model.pt and the checkpoint load into plain models."""
    # a small lr: at the recipe's 0.1 this 15 K-parameter model is chaotic for its first steps, and
    # last-bit differences of the fused kernels grow 10x per step
    common = ["max_steps=4", "frequent=1", "save_every_steps=4", "lr=0.001"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main([TINY, "--set", f"output={eager}", "progress_bar=false", *common]) == 0
    assert main([TINY, "--set", f"output={compiled}", "progress_bar=false", "compile=True", *common]) == 0
    assert len(_losses(eager)) == 4
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-3)
    state = load_file(compiled / "model.pt")
    assert not any("_orig_mod" in key for key in state)
    get_model("tiny_mfn", num_features=64).load_state_dict(state, strict=True)
    checkpoint = store.load_checkpoint_set(store.find_latest_complete(compiled), 0, 1)
    for part in ("state_dict_backbone", "state_dict_softmax_fc"):
        assert not any("_orig_mod" in key for key in checkpoint[part])
    # an eager run resumes the compiled run's checkpoint set
    assert main([TINY, "--set", f"output={compiled}", "progress_bar=false", "resume=True", "max_steps=6",
                 "frequent=1", "lr=0.001"]) == 0
    assert len(_losses(compiled)) >= 6
