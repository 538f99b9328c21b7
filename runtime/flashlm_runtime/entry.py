"""The flashlm-run console script: Ctrl-C while it is still importing exits 130 with one line, no traceback."""
from __future__ import annotations

import os
import signal
import sys


def _interrupted(signum, frame) -> None:
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # nothing to clean up yet: no file is open for writing during start-up


def main():
    # Installed only for the command, never on import of the library (an app embedding the runtime
    # keeps its own SIGINT handling). Once click is loaded, `guarded` turns Ctrl-C into the same line.
    previous = signal.signal(signal.SIGINT, _interrupted)
    from flashlm_runtime.cli import run_cmd

    signal.signal(signal.SIGINT, previous)
    return run_cmd()
