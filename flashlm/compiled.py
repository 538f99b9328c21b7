"""torch.compile for the training step: on by default for runs long enough to repay it, where a C++ compiler exists."""
from __future__ import annotations

import torch

from flashlm.recipes import TrainConfig
from flashlm_core.errors import ConfigError

# The one-off compilation takes tens of seconds (less when torch's cache in /tmp holds the graphs) and the compiled
# default bf16 step runs faster (bench/train_speed.py): it pays back after a few minutes, so a run shorter than this
# (the demo, the tests, smoke runs) stays eager unless --compile asks for it.
COMPILE_MIN_MINUTES = 10.0
COMPILE_MIN_STEPS = 1500


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build its kernels with (CXX, else g++ / clang++ on PATH), None if none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor raises its own InvalidCxxCompiler, or fails to import on odd platforms
        return None


def choose_compile(tc: TrainConfig, *, world: int = 1) -> tuple[bool, str]:
    """(compile the training step, one line saying why). tc.compile True/False forces it; None decides: on for a
    long bf16 run alone where a C++ compiler exists. tc.bf16 as resolved for the run (train.resolve_kernels).
    The compiler is looked for only when it decides (forced, or a run that would compile): a run that stays eager
    anyway (the demo, the tests, fp32) skips the probe, ~1 s of importing inductor on a 2-vCPU Xeon, and is not told
    to install g++."""
    if tc.compile is False:
        return False, "compile: off (--no-compile)"
    if not tc.compile:
        if world > 1:
            return False, "compile: off (not used under torchrun by default; --compile forces it)"
        if tc.bf16 is False:
            # the fp32 step is its matmuls, which inductor leaves to the same BLAS: bench/train_speed.py --no-bf16 shows both
            return False, "compile: off (in fp32 the compiled step measured no faster; --compile forces it)"
        if (tc.minutes or 0) < COMPILE_MIN_MINUTES and (tc.max_steps or 0) < COMPILE_MIN_STEPS:
            return False, (f"compile: off (a run under {COMPILE_MIN_MINUTES:g} minutes or {COMPILE_MIN_STEPS:,} steps would not "
                           "repay the one-off 15-40 s of compilation; --compile forces it)")
    cxx = cxx_compiler()
    if cxx is None:
        if tc.compile:
            raise ConfigError("--compile needs a C++ compiler for torch.compile and none was found (install g++, or set CXX); "
                              "or drop --compile to train eagerly")
        return False, "compile: off (torch.compile needs a C++ compiler and none was found: install g++ for a faster bf16 step)"
    if tc.compile:
        return True, f"compile: on (forced by --compile; kernels built with {cxx})"
    return True, f"compile: on (torch.compile with {cxx}: the first step compiles for 15-40 s; --no-compile turns it off)"


def compile_step(fn: torch.nn.Module):
    """torch.compile(fn) with random draws left to torch's own kernels.

    fallback_random keeps dropout's randint an eager aten op: the compiled step then draws the masks an eager
    step does (same torch seed, same dropped elements; tests/test_train.py), and the bf16 step ran faster that way than
    with inductor's in-kernel RNG when this was chosen (bench/train_speed.py measures the shipped form).
    """
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(fn)
