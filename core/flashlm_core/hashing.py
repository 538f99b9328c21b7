"""sha256 of files, without loading OpenSSL into the runtime when CPython's own sha256 is there (stdlib only)."""
from __future__ import annotations

import os


def _new_sha256():
    # hashlib pulls in OpenSSL's libcrypto, megabytes of resident memory for a runtime with a memory budget
    # (bench/runtime_speed.py measures its RSS). CPython's builtin implementation gives identical digests,
    # slower but fine for the few MB the runtime verifies at load.
    try:
        from _sha2 import sha256  # CPython >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # CPython <= 3.11
        except ImportError:
            from hashlib import sha256
    return sha256()


def sha256_file(path: str | os.PathLike, *, fast: bool = False) -> str:
    """Hex sha256 of a file. fast=True uses hashlib (OpenSSL, ~3x faster): for training-side files
    such as a 1 GB token file, where the runtime's memory budget does not apply."""
    if fast:
        import hashlib

        h = hashlib.sha256()
    else:
        h = _new_sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
