"""Shared CLI plumbing: one-line typed errors, extras checks, dataclass fields as click options (no torch)."""
from __future__ import annotations

import dataclasses
import functools
import importlib
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


def guarded(fn):
    """Turn our typed errors into one line on stderr and exit 1 (never a traceback); Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlashLMError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


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
