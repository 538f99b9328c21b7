"""What every results file records beside its figures: the command, commit, date, CPU model and ISA flags, versions."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from flashlm_core.cpu import cpu_isa_flags, cpu_kind

ROOT = Path(__file__).resolve().parents[1]


def provenance(*, packages: tuple[str, ...] = ("torch",)) -> dict:
    """The record's header; packages: the installed distributions whose versions the figures depend on."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    return {"command": "python " + " ".join(sys.argv), "commit": commit, "uncommitted_changes": dirty,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_kind(), "cpu_flags": cpu_isa_flags(),
            "python": platform.python_version(), **{name: importlib.metadata.version(name) for name in packages}}
