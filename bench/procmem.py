"""A command's wall time and the peak resident memory of its whole process tree, sampled from /proc."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def watched(cmd: list[str], *, on_sample=None, every: float = 0.05, env: dict | None = None) -> dict:
    """Run cmd, sampling its tree's memory every `every` seconds (on_sample(rss, seconds) each time): stdout, wall
    seconds, peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=None if env is None else {**os.environ, **env})
    peak = [0]

    def sample():
        while proc.poll() is None:
            rss = tree_rss(proc.pid)
            peak[0] = max(peak[0], rss)
            if on_sample is not None:
                on_sample(rss, time.perf_counter() - t0)
            time.sleep(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return {"stdout": out, "stderr": err, "seconds": time.perf_counter() - t0, "peak_rss_bytes": peak[0]}


def last_json_line_step(path: Path, tail: int = 4096) -> int:
    """The step of the last complete row of a metrics.jsonl, reading only its last `tail` bytes (0 before any row)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0
