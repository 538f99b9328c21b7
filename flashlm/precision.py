"""Training precision from the hardware: bf16 autocast only where the CPU computes bf16 natively."""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import torch

# CPU feature flags that mean bf16 matmuls run in hardware. Without them (most AVX2 laptops) bf16
# autocast is emulated: a 2048x256x4096 matmul took 11.7 s in bf16 against 0.13 s in fp32 on an
# AVX2-only EPYC, so the default there must be fp32.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)  # ARMv8.6 BF16 (Graviton3, Apple M2 and later report it)
PROBE_SPEEDUP = 1.2  # bf16 must beat fp32 by this much in the probe to be chosen


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx_vnni")  # what picks the kernels


def cpu_isa_flags() -> list[str]:
    """The x86 flags among ISA_FLAGS this CPU has (/proc/cpuinfo; empty elsewhere): named beside every figure."""
    path = Path("/proc/cpuinfo")
    text = path.read_text(errors="replace") if path.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in flags if f in ISA_FLAGS]


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The native-bf16 CPU flags present, [] when none, None when this OS does not say (then probe)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if path.is_file():
            cpuinfo = path.read_text(errors="replace")
        elif platform.system() == "Darwin":
            return _darwin_bf16()
        else:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return None
    return [f for f in (*X86_BF16_FLAGS, *ARM_BF16_FLAGS) if f in flags]


def cpu_kind() -> str:
    """The CPU's model name and its native-bf16 flags, for naming the machine next to every figure."""
    path = Path("/proc/cpuinfo")
    text = path.read_text(errors="replace") if path.is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), platform.processor())
    return f"{name}, native bf16 flags {cpu_bf16_flags() or 'none'}"


def _darwin_bf16() -> list[str] | None:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return None if out.returncode != 0 or value not in ("0", "1") else (["FEAT_BF16"] if value == "1" else [])


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
    if flags:
        return True, f"precision: bf16 autocast (the CPU has native bf16: {', '.join(flags)}; --no-bf16 forces fp32)"
    if flags == []:
        return False, "precision: fp32 (this CPU has no native bf16, where bf16 is emulated and several times slower; --bf16 forces it)"
    speedup = probe_bf16_speedup()
    use = speedup >= PROBE_SPEEDUP
    return use, (f"precision: {'bf16 autocast' if use else 'fp32'} (the CPU flags are not readable here; a probe measured "
                 f"bf16 at {speedup:.2f}x fp32; --bf16/--no-bf16 force it)")
