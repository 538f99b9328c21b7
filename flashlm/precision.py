"""Training precision from the hardware: bf16 autocast only where the CPU computes bf16 natively."""
from __future__ import annotations

import time

import torch

from flashlm_core.cpu import bf16_capped, cpu_bf16_flags

PROBE_SPEEDUP = 1.2  # bf16 must beat fp32 by this much in the probe to be chosen


def probe_bf16_speedup(*, repeats: int = 3) -> float:
    """fp32 time / bf16-autocast time of a training-shaped matmul, forward and backward (~0.1 s)."""
    x = torch.randn(1024, 256, requires_grad=True)
    w = torch.randn(1024, 256, requires_grad=True)

    def run(bf16: bool) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = x @ w.T  # (1024, 1024): the shape class of the qkv / FFN matmuls of a micro-batch
            y.float().sum().backward()
            best = min(best, time.perf_counter() - t0)
        return best

    run(False), run(True)  # warm up both kernels
    return run(False) / run(True)


def choose_bf16(requested: bool | None) -> tuple[bool, str]:
    """(use bf16 autocast, one line saying why). requested True/False forces it; None decides."""
    if requested is not None:
        return requested, f"precision: {'bf16 autocast' if requested else 'fp32'} (forced by --{'' if requested else 'no-'}bf16)"
    flags = cpu_bf16_flags()
    if flags and bf16_capped():
        return False, (f"precision: fp32 (ONEDNN_MAX_CPU_ISA caps this CPU below its native bf16 ({', '.join(flags)}), where bf16 is "
                       "emulated and several times slower; --bf16 forces it)")
    if flags:
        return True, f"precision: bf16 autocast (the CPU has native bf16: {', '.join(flags)}; --no-bf16 forces fp32)"
    if flags == []:
        return False, "precision: fp32 (this CPU has no native bf16, where bf16 is emulated and several times slower; --bf16 forces it)"
    speedup = probe_bf16_speedup()
    use = speedup >= PROBE_SPEEDUP
    return use, (f"precision: {'bf16 autocast' if use else 'fp32'} (the CPU flags are not readable here; a probe measured "
                 f"bf16 at {speedup:.2f}x fp32; --bf16/--no-bf16 force it)")
