"""Console-script start-up: Ctrl-C while a command is still importing (torch takes seconds) exits 130 with one line."""
from __future__ import annotations

import importlib
import os
import signal
import sys


def _interrupted(signum, frame) -> None:
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # nothing to clean up yet: no file is open for writing during start-up


def launch(module: str, command: str):
    """Import `module` with Ctrl-C answered in one line, then run its click `command`.

    The handler is installed for console scripts only, never on import of a library (an app that
    embeds the runtime keeps its own SIGINT handling); once the command runs, `clikit.guarded`
    turns Ctrl-C into the same line.
    """
    previous = signal.signal(signal.SIGINT, _interrupted)
    cmd = getattr(importlib.import_module(module), command)
    signal.signal(signal.SIGINT, previous)
    try:
        return cmd()
    finally:
        # The command has finished (click exits through SystemExit): a Ctrl-C now could only interrupt the
        # interpreter's shutdown, where an unhandled KeyboardInterrupt kills the process by SIGINT (exit -2)
        # instead of letting it exit with the command's own code.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
