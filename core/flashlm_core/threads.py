"""Threads on a CPU that other work may share: how many cores are free now, and how many threads to use (stdlib only)."""
from __future__ import annotations

import os
import time
from pathlib import Path

SAMPLE_SECONDS = 0.25  # how long /proc/stat is watched to count the cores other work keeps busy


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies summed over all CPUs from /proc/stat, None where there is none."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many cores' worth of CPU other processes used over the last `seconds` (we sleep meanwhile); None off Linux."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def free_cores(cores: int, busy: float | None) -> int:
    """Cores not kept busy by other work (at least one); all of them when that cannot be told (busy None)."""
    return cores if busy is None else max(1, min(cores, round(cores - busy)))


def choose_threads(requested: int | None, *, cores: int, busy: float | None) -> tuple[int, str | None]:
    """(threads, a line to say or None). A given --threads wins; otherwise one thread per core not busy with
    other work (at least one): a thread that shares its core with another process stalls every barrier of the
    others, so beside busy loops fewer threads step faster (bench/train_busy.py measures it)."""
    if requested:
        return requested, None
    free = free_cores(cores, busy)
    if free == cores:
        return cores, None
    return free, (f"threads: {free} of {cores} (other work kept {busy:.1f} cores busy when training started; "
                  "pass --threads N to choose)")
