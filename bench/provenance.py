"""What every results file records beside its figures: the command, commit, date, CPU model and ISA flags, versions."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from flashlm_core.cpu import ISA_CAP_ENV, cpu_isa_flags, cpu_kind

ROOT = Path(__file__).resolve().parents[1]


# Environment variables that change what a bench measures (the allocator, torch's and oneDNN's ISA caps, OpenMP's
# spinning, thread counts): the recorded command carries them, so that it reproduces the run.
MEASURED_ENV = ("LD_PRELOAD", *ISA_CAP_ENV, "OMP_WAIT_POLICY", "OMP_NUM_THREADS")


def command() -> str:
    """This process's command line as a user would type it: the measured environment variables set, then python ARGS."""
    env = [f"{name}={os.environ[name]}" for name in MEASURED_ENV if os.environ.get(name)]
    return " ".join([*env, "python", *sys.argv])


def provenance(*, packages: tuple[str, ...] = ("torch",)) -> dict:
    """The record's header; packages: the installed distributions whose versions the figures depend on. Changes under
    results/ (an earlier bench of the same session) do not count as uncommitted: they are not code."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    return {"command": command(), "commit": commit, "uncommitted_changes": bool(status.strip()),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_kind(), "cpu_flags": cpu_isa_flags(),
            "python": platform.python_version(), **{name: importlib.metadata.version(name) for name in packages}}
