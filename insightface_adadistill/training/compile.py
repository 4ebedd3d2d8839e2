"""`compile = True`: torch.compile of the student and the frozen teacher's forward (docs/speed.md).

Both are compiled IN PLACE (`nn.Module.compile`), not wrapped by `torch.compile(module)`: the
module object, its parameters and its `state_dict` keys stay exactly as they are, so checkpoints,
`model.pt`, resume and ONNX export never see an `_orig_mod.` prefix, and DDP keeps wrapping the
same student. Compilation itself is lazy (the first step), so a platform that cannot compile (no
C++ compiler for the CPU backend, no Triton for the GPU one, an unsupported Python) fails there;
`explain_compile_failure` turns that failure into one `CompileError` naming the cause and the fix.
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
    """Compile `step`'s student and teacher in place with `torch.compile(mode=mode)`; returns `step`.

    The teacher runs under no_grad and autocast inside its own forward, which the compiled graph
    keeps. With mode 'reduce-overhead' (CUDA graphs) the step marks each new iteration for the
    graph pool, so outputs of the previous step are never overwritten while still referenced.
    """
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
    """Re-raise a torch.compile failure inside the block as `CompileError` (when `enabled`).

    Everything else passes through unchanged, so a genuine training error is never relabelled.
    """
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
