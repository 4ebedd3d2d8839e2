"""`compile = True`: torch.compile of the student and the frozen teacher's forward (docs/speed.md).

Both are compiled IN PLACE (`nn.Module.compile`), not wrapped by `torch.compile(module)`, so their
`state_dict` keys never get an `_orig_mod.` prefix (checkpoints, `model.pt`, ONNX) and DDP wraps the
same student. Compilation is lazy: a platform that cannot compile (no C++ compiler, no Triton, an
unsupported Python) fails at the first step, which `explain_compile_failure` turns into a `CompileError`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from insightface_adadistill.backbones.loading import unwrap
from insightface_adadistill.errors import UserError
from insightface_adadistill.training.step import DistillStep

CUDA_GRAPHS_MODE = "reduce-overhead"
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor")


class CompileError(UserError, RuntimeError):
    """torch.compile cannot run this model on this platform; the message says why and how to go on."""


def compile_step(step: DistillStep, mode: Optional[str] = None) -> DistillStep:
    """Compile `step`'s student and teacher in place with `torch.compile(mode=mode)`; returns `step`. The
    teacher's no_grad and autocast are inside its forward, so the graph keeps them. With 'reduce-overhead'
    (CUDA graphs) the step marks each iteration, so the previous step's outputs are never overwritten."""
    unwrap(step.student).compile(mode=mode)
    if step.teacher is not None:
        step.teacher.compile(mode=mode)
    step.marks_cudagraph_steps = mode == CUDA_GRAPHS_MODE
    return step


def _compiler_failure(exc: BaseException) -> Optional[BaseException]:
    """The torch.compile exception in `exc`'s chain (dynamo or inductor), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.startswith(_COMPILER_MODULES):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def explain_compile_failure(enabled: bool) -> Iterator[None]:
    """Re-raise a torch.compile failure inside the block as `CompileError` (when `enabled`); anything
    else passes unchanged, so a genuine training error is never relabelled."""
    try:
        yield
    except Exception as exc:
        failure = _compiler_failure(exc) if enabled else None
        if failure is None:
            raise
        lines = [line.strip() for line in str(failure).splitlines()
                 if line.strip() and not line.startswith("Set TORCHDYNAMO_VERBOSE")]
        cause = " ".join(lines[:3])[:300]
        raise CompileError(
            f"torch.compile failed on this platform ({type(failure).__name__}: {cause}); train "
            f"without it with compile = False (or --set compile=False). The CPU backend needs a working "
            f"C++ compiler (gcc or clang) and the CUDA backend Triton; see docs/speed.md") from exc
