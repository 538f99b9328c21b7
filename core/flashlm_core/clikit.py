"""Shared CLI plumbing: one-line typed errors, extras checks, dataclass fields as click options (no torch)."""
from __future__ import annotations

import dataclasses
import errno
import functools
import importlib
import os
import sys

import click

from flashlm_core.errors import FlashLMError, MissingExtraError

EXTRAS = {
    "train": ("torch", "datasets", "safetensors", "tqdm"),
    "export": ("torch", "onnx"),
    "serve": ("uvicorn", "starlette"),
}


def require_extra(extra: str) -> None:
    """Raise MissingExtraError naming the pip extra when one of its packages is missing."""
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(f"this command needs the '{extra}' extra ({module} is missing): pip install 'flashlm[{extra}]'") from None


# What to do about an OS error, by errno: the second half of its one line.
OS_FIXES = {
    errno.ENOSPC: "the disk (or the file output goes to) is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free some space or write somewhere else (--out)",
    errno.EROFS: "that filesystem is read-only: write somewhere else (--out)",
    errno.EACCES: "no permission: write to a folder you own (--out) or fix its permissions",
    errno.EPERM: "not permitted: write to a folder you own (--out) or fix its permissions",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "that path is a folder: give a file",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENOMEM: "out of memory",
    errno.EBADF: "run the command without >&- (or give its output somewhere to go)",
}


class _ClosedStream:
    """sys.stdout when the process started with it closed (`cmd >&-`): writing to it is an EBADF error, as it
    is for other Unix tools, instead of an AttributeError on None."""

    def write(self, _text):
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self):
        pass


def os_error_line(exc: OSError) -> str:
    """One line for an OS error: what failed on which path, and what to do."""
    what = exc.strerror or str(exc)
    if exc.errno is None and "written" in what:  # a short write reported without errno (onnx/protobuf): a full disk
        return f"error: a write was cut short ({what}): No space left on device?; {OS_FIXES[errno.ENOSPC]}"
    fix = OS_FIXES.get(exc.errno, "check the path and the disk")
    return f"error: {exc.filename}: {what}; {fix}" if exc.filename else f"error: {what} (writing output); {fix}"


def guarded(fn):
    """Turn our typed errors and OS errors (disk full, read-only, no permission ...) into one line on stderr and exit 1
    (never a traceback); a closed pipe (`| head`) ends quietly with 141, as Unix tools do; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if sys.stdout is None:
            sys.stdout = _ClosedStream()
        try:
            return fn(*args, **kwargs)
        except FlashLMError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(141)  # 128 + SIGPIPE: what `yes | head` leaves
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                _quiet_stdout()
                sys.exit(141)
            click.echo(os_error_line(exc), err=True)
            _quiet_stdout()  # a stdout that failed (/dev/full) must not fail again at exit
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of a broken stdout prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):  # stdout closed or not a file: nothing left to flush there
        sys.stdout = _ClosedStream()


def dataclass_options(cls, *, skip=(), helps: dict | None = None):
    """Click options for every field of a dataclass: --field-name, default None = 'keep the dataclass/recipe value'.

    Defaults therefore live only in the dataclass; the help text shows them after the field's line in `helps`.
    """
    defaults = cls()
    helps = helps or {}

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = f.name.replace("_", "-")
            default = getattr(defaults, f.name)
            if isinstance(default, bool) or str(f.type) == "bool | None":
                shown = "auto" if default is None else default
                opt = click.option(f"--{flag}/--no-{flag}", f.name, default=None, help=f"{helps.get(f.name, '')} (default: {shown})".lstrip())
            else:
                kind = {"int": int, "float": float, "str": str}.get(str(f.type).replace(" | None", ""), str)
                opt = click.option(f"--{flag}", f.name, type=kind, default=None, help=f"{helps.get(f.name, '')} (default: {default})".lstrip())
            fn = opt(fn)
        return fn

    return decorate
