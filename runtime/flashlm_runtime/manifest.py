"""Reads and verifies an export folder's manifest.json: format version, sha256 of every file, config."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from flashlm import artifacts as A
from flashlm.config import ModelConfig, check_format_version
from flashlm.errors import CheckpointError


@dataclass(frozen=True)
class ExportFolder:
    """A verified export: its root, manifest and the ModelConfig it was exported with."""

    root: Path
    manifest: dict
    config: ModelConfig

    def graph_path(self, name: str) -> Path:
        if name not in self.manifest["graphs"]:
            have = ", ".join(sorted(self.manifest["graphs"]))
            hint = " (re-export with --int8)" if name.endswith("_quantized") else ""
            raise CheckpointError(f"{self.root}: no {name} graph in this export (has {have}){hint}")
        return self.root / self.manifest["graphs"][name]["file"]

    @property
    def eot_id(self) -> int:
        return int(self.manifest["tokenizer"]["eot_id"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_export(path, *, verify: bool = True) -> ExportFolder:
    """Load manifest.json and (by default) check every listed file's size and sha256.

    Raises CheckpointError naming the problem: missing folder/file, corrupt JSON, newer
    format_version, or a file whose hash does not match (tampered or truncated).
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such export folder; create one with flashlm-export")
    mpath = root / A.MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{root}: no {A.MANIFEST}; this is not a flashlm export folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{mpath}: corrupt ({exc}); re-export with flashlm-export") from None
    check_format_version(manifest.get("format_version"), what=str(mpath))
    config = ModelConfig.from_dict(manifest.get("config"))
    for rel, info in manifest.get("files", {}).items():
        file = root / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {A.MANIFEST} but missing; re-export with flashlm-export")
        if verify and (file.stat().st_size != info["bytes"] or _sha256(file) != info["sha256"]):
            raise CheckpointError(f"{file}: sha256 does not match {A.MANIFEST} (modified or truncated); re-export or re-download")
    return ExportFolder(root, manifest, config)
