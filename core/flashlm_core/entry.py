"""Console-script start-up: Ctrl-C while a command imports (torch takes seconds) or runs exits 130 with one line."""
from __future__ import annotations

import _thread
import importlib
import os
import signal
import sys
import threading


def _exit_interrupted() -> None:
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # an import writes no file of ours; whatever else we write is atomic (temp file, then rename)


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame) -> None:
    """SIGINT for console scripts: exit at once inside an import, else KeyboardInterrupt for `clikit.guarded`.

    A KeyboardInterrupt raised inside an import is not safe to unwind: it can leave a half-initialised module
    behind (numpy.linalg's `__getattr__` then recursed until RecursionError), cross a pybind11 boundary of
    torch's start-up (std::terminate: exit -6), or land in importlib's module-lock weakref callback, where
    Python prints "Exception ignored ... Traceback" and goes on as if no key had been pressed.
    """
    if _importing(frame):
        _exit_interrupted()
    raise KeyboardInterrupt


def _on_sigterm(signum, frame) -> None:
    """SIGTERM for console scripts: unwind like an exception (so that temp files and folders of an atomic write are
    removed on the way out) and exit 143; inside an import, exit at once (nothing of ours is half-written then)."""
    if _importing(frame):
        os._exit(143)
    raise SystemExit(143)


def _redeliver_swallowed_interrupt(unraisable) -> None:
    """sys.unraisablehook: a KeyboardInterrupt that Python could not raise (it landed in a weakref callback or a
    __del__, and was "ignored") is delivered again, at the next ordinary bytecode, where it propagates."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        # from another thread, a moment later: called now, the handler would run at once, still inside the hook
        timer = threading.Timer(0.01, _thread.interrupt_main)
        timer.daemon = True
        timer.start()
    else:
        sys.__unraisablehook__(unraisable)


def launch(module: str, command: str):
    """Import `module` and run its click `command` with Ctrl-C answered by one line and exit 130.

    The handlers are installed for console scripts only, never on import of a library (an app that embeds the
    runtime keeps its own SIGINT handling). The trainer replaces the SIGINT handler with its checkpoint-and-stop
    flag while it trains.
    """
    sys.unraisablehook = _redeliver_swallowed_interrupt
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)  # the trainer and the server put their own in place while they run
    try:
        return getattr(importlib.import_module(module), command)()
    finally:
        # The command has finished (click exits through SystemExit): a Ctrl-C now could only interrupt the
        # interpreter's shutdown, where an unhandled KeyboardInterrupt kills the process by SIGINT (exit -2)
        # instead of letting it exit with the command's own code.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
