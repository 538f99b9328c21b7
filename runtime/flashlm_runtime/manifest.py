"""Reads and verifies an export folder's manifest.json: format version, sha256 of every file, config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flashlm import artifacts as A
from flashlm.atomic import sha256_file
from flashlm.config import ModelConfig, read_versioned_json
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


def open_export(path, *, verify: bool = True) -> ExportFolder:
    """Load manifest.json and (by default) check every listed file's size and sha256.

    Raises CheckpointError naming the problem: missing folder/file, corrupt JSON, newer
    format_version, or a file whose hash does not match (tampered or truncated).
    """
    root = Path(path)
    manifest = read_versioned_json(root, A.MANIFEST, kind="export", make="create one with flashlm-export",
                                   fix="re-export with flashlm-export")
    config = ModelConfig.from_dict(manifest.get("config"))
    for rel, info in manifest.get("files", {}).items():
        file = root / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {A.MANIFEST} but missing; re-export with flashlm-export")
        if verify and (file.stat().st_size != info["bytes"] or sha256_file(file) != info["sha256"]):
            raise CheckpointError(f"{file}: sha256 does not match {A.MANIFEST} (modified or truncated); re-export or re-download")
    return ExportFolder(root, manifest, config)
