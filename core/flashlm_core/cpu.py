"""What CPU this is, for choosing kernels and for naming the machine beside every figure (stdlib only)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# CPU feature flags that mean bf16 matmuls run in hardware. Without them (most AVX2 laptops) bf16 is emulated and
# many times slower than fp32 (bench/train_speed.py), so flashlm.precision defaults to fp32 there.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)  # ARMv8.6 BF16 (Graviton3, Apple M2 and later report it)


# oneDNN's ISA caps below its native bf16 kernels (ONEDNN_MAX_CPU_ISA): under one of them a bf16 matmul is emulated
# even on a CPU whose flags say bf16, as on a CPU without it (the AVX2 cap of docs/avx2-training.md).
ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")
# The environment variables that cap the ISA torch's kernels use below what the CPU has: named beside every figure.
ISA_CAP_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


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


def isa_cap(environ=None) -> str:
    """The ISA caps set in the environment, as 'NAME=value' joined by spaces ('' when none)."""
    environ = os.environ if environ is None else environ
    return " ".join(f"{name}={environ[name]}" for name in ISA_CAP_ENV if environ.get(name))


def bf16_capped(environ=None) -> bool:
    """True when ONEDNN_MAX_CPU_ISA caps oneDNN below its native bf16 kernels, whatever the CPU's flags say."""
    environ = os.environ if environ is None else environ
    return environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in ONEDNN_CAPS_WITHOUT_BF16


CAP_MARK = ", capped by "  # how cpu_kind names an ISA cap in force; kind_cap reads it back
BF16_MARK = ", native bf16 flags "  # what follows the model name in cpu_kind; kind_name reads the name back


def kind_cap(kind: str) -> str:
    """The ISA cap a cpu_kind() string names ('' when it names none): for reading recorded results."""
    return kind.split(CAP_MARK, 1)[1] if CAP_MARK in kind else ""


def kind_name(kind: str) -> str:
    """The model name a cpu_kind() string starts with, without its bf16 flags and cap: for reading recorded results."""
    return kind.split(BF16_MARK, 1)[0]


def with_generation(name: str, cpuinfo: str) -> str:
    """A model name with no model number in it ('AMD EPYC' under a hypervisor) given its x86 family and model, which do
    tell one generation from the next (family 23 is Zen 1 and 2, 25 Zen 3 and 4); a numbered name is returned as it is."""
    if any(ch.isdigit() for ch in name):
        return name
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in cpuinfo.splitlines()[:40])}
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def cpu_kind() -> str:
    """The CPU's model name and its native-bf16 flags (and any ISA cap in force), for naming the machine next to every figure."""
    path = Path("/proc/cpuinfo")
    text = path.read_text(errors="replace") if path.is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), platform.processor())
    name = with_generation(name, text)
    cap = isa_cap()
    return f"{name}{BF16_MARK}{cpu_bf16_flags() or 'none'}" + (f"{CAP_MARK}{cap}" if cap else "")


def _darwin_bf16() -> list[str] | None:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return None if out.returncode != 0 or value not in ("0", "1") else (["FEAT_BF16"] if value == "1" else [])
