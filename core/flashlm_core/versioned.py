"""Versioned JSON artifacts: the format version every folder carries, and the one reader that checks it (stdlib only)."""
from __future__ import annotations

import json
from pathlib import Path

from flashlm_core.errors import CheckpointError, FlashLMError

# Version of every artifact we write (checkpoint config.json, export manifest.json, data meta.json).
# Readers accept this version and older ones (each future version adds one upgrade step from the
# previous one where it is read) and refuse newer ones.
FORMAT_VERSION = 1
MAX_JSON_BYTES = 16_000_000  # config.json, manifest.json and meta.json are a few kB; a larger one is not ours


def check_format_version(found: object, *, what: str, error: type[FlashLMError] = CheckpointError) -> int:
    """Return a supported format version or raise `error` naming both versions."""
    if not isinstance(found, int) or found < 1:
        raise error(f"{what}: format_version {found!r} is not a positive integer; the file is corrupt")
    if found > FORMAT_VERSION:
        raise error(
            f"{what}: format_version {found} is newer than this flashlm reads ({FORMAT_VERSION}); "
            "upgrade flashlm (pip install -U flashlm)"
        )
    return found


def read_versioned_json(folder, name: str, *, kind: str, make: str, fix: str, error: type[FlashLMError] = CheckpointError) -> dict:
    """FOLDER/NAME of a versioned artifact folder (checkpoint, export, data), version-checked.

    Raises `error` for a missing folder or file (hint: `make`), a corrupt file (hint: `fix`) or a newer format_version.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise error(f"{folder}: no such {kind} folder; {make}")
    path = folder / name
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        raise error(f"{path}: not a regular file; {fix}")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{path}: {path.stat().st_size:,} bytes, more than any {name} this project writes "
                        f"({MAX_JSON_BYTES:,}); {fix}")
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{folder}: no {name}; this is not a flashlm {kind} folder: {make}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise error(f"{path}: corrupt ({type(exc).__name__}: {str(exc)[:200]}); {fix}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: corrupt (not a JSON object); {fix}")
    check_format_version(raw.get("format_version"), what=str(path), error=error)
    return raw
