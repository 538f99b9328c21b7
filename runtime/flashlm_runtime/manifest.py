"""Reads and verifies an export folder's manifest.json: format version, config, file sizes and sha256."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flashlm import artifacts as A
from flashlm.config import ModelConfig, read_versioned_json
from flashlm.errors import CheckpointError, ConfigError
from flashlm.hashing import sha256_file


@dataclass(frozen=True)
class ExportFolder:
    """A verified export: its root, manifest and the ModelConfig it was exported with."""

    root: Path
    manifest: dict
    config: ModelConfig
    hash_files: bool = True  # False with verify="none": sizes only
    _checked: set = field(default_factory=set, repr=False, compare=False)  # files whose sha256 was verified

    def graph_path(self, name: str) -> Path:
        """Verified path of a graph by manifest name (model, model_quantized, fsp_head, ...)."""
        if name not in self.manifest["graphs"]:
            have = ", ".join(sorted(self.manifest["graphs"]))
            if name.endswith("_quantized"):
                hint = " (re-export with --int8)"
            elif f"{name}_quantized" in self.manifest["graphs"]:
                hint = " (it was exported with --int8-only: load it with int8=True / flashlm-run --int8)"
            else:
                hint = ""
            raise CheckpointError(f"{self.root}: no {name} graph in this export (has {have}){hint}")
        return self.verified(self.manifest["graphs"][name]["file"])

    def verified(self, rel: str) -> Path:
        """Path of a listed file after checking its sha256 against the manifest (once per file;
        skipped when the folder was opened with verify="none")."""
        if self.hash_files and rel not in self._checked:
            info = self.manifest["files"].get(rel)
            if info is None:
                raise CheckpointError(f"{self.root / rel}: not listed in {A.MANIFEST}; re-export with flashlm-export")
            if sha256_file(self.root / rel) != info["sha256"]:
                raise CheckpointError(f"{self.root / rel}: sha256 does not match {A.MANIFEST} (modified or corrupted); "
                                      "re-export or re-download")
            self._checked.add(rel)
        return self.root / rel

    @property
    def eot_id(self) -> int:
        return int(self.manifest["tokenizer"]["eot_id"])


def open_export(path, *, verify: str = "used") -> ExportFolder:
    """Load manifest.json and check every listed file exists with its recorded size.

    verify="used" (default): callers hash each file before they load it (ExportFolder.verified),
    so a run hashes only what it runs; "all": hash every listed file now; "none": sizes only.
    Raises CheckpointError naming the problem: missing folder/file, corrupt JSON, newer
    format_version, a size or sha256 that does not match (tampered or truncated).
    """
    if verify not in ("used", "all", "none"):
        raise ConfigError(f"verify must be 'used', 'all' or 'none', got {verify!r}")
    root = Path(path)
    manifest = read_versioned_json(root, A.MANIFEST, kind="export", make="create one with flashlm-export",
                                   fix="re-export with flashlm-export")
    config = ModelConfig.from_dict(manifest.get("config"))
    for rel, info in manifest.get("files", {}).items():
        file = root / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {A.MANIFEST} but missing; re-export with flashlm-export")
        if file.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {A.MANIFEST} says {info['bytes']} (truncated or modified); "
                                  "re-export or re-download")
    folder = ExportFolder(root, manifest, config, hash_files=verify != "none")
    if verify == "all":
        for rel in manifest.get("files", {}):
            folder.verified(rel)
    return folder
