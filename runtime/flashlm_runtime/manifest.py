"""Reads and verifies an export folder's manifest.json: format version, config, file sizes and sha256."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from flashlm_core import artifacts as A
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError, ConfigError
from flashlm_core.generation import DECODING_TYPES, GENERATION_DEFAULTS
from flashlm_core.hashing import sha256_file
from flashlm_core.versioned import read_versioned_json

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"  # the bundled export (package data)


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / A.MANIFEST).is_file():
        raise CheckpointError(
            "no --model given and this install bundles no default model; export one with "
            "`flashlm-export CHECKPOINT --out DIR --int8` and pass --model DIR")
    return DEFAULT_MODEL_DIR


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

    @property
    def ops(self) -> str:
        """The backbone's graph variant, artifacts.OPS (exports older than the contrib variant are plain)."""
        return self.manifest.get("ops", A.PLAIN)


def _bad(root: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{root / A.MANIFEST}: {what}; re-export with flashlm-export")


def confined(root: Path, rel: object) -> Path:
    """root/rel for a manifest path that stays inside the folder: relative, no '..', no symlink out.

    Checked before the file is touched, so a hostile manifest cannot make us read (or report the
    size of) any file elsewhere on the machine.
    """
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise _bad(root, f"file path {rel!r} is not a plain relative path")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts or Path(rel).is_absolute():
        raise _bad(root, f"file path {rel!r} leaves the export folder (absolute or '..')")
    path = root / rel
    real_root, target = root.resolve(), path.resolve()  # resolve() follows every symlink on the way
    if real_root not in target.parents:
        raise _bad(root, f"{rel} is (or passes through) a symlink that leaves the export folder")
    return path


def check_manifest(root: Path, manifest: dict) -> None:
    """The manifest's schema: the keys and types the runtime reads, every path confined to root."""
    for key, kind in (("config", dict), ("graphs", dict), ("files", dict), ("tokenizer", dict)):
        if not isinstance(manifest.get(key), kind):
            raise _bad(root, f"'{key}' is missing or not a {kind.__name__}")
    for rel, info in manifest["files"].items():
        confined(root, rel)
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or not isinstance(info.get("sha256"), str) \
                or len(info["sha256"]) != 64:
            raise _bad(root, f"files[{rel!r}] needs 'bytes' (integer) and 'sha256' (64 hex digits)")
    for name, graph in manifest["graphs"].items():
        if not isinstance(graph, dict) or not isinstance(graph.get("file"), str):
            raise _bad(root, f"graphs[{name!r}] has no 'file'")
        if graph["file"] not in manifest["files"]:
            raise _bad(root, f"graph file {graph['file']!r} is not listed under 'files'")
    for key, kind in (("generation", dict), ("fsp", dict), ("ops", str), ("decoding", dict)):
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):
            raise _bad(root, f"'{key}' is a {type(manifest[key]).__name__}, not a {kind.__name__}")
    for key, kind in DECODING_TYPES.items():
        value = (manifest.get("decoding") or {}).get(key, ...)
        if value is not ... and (isinstance(value, bool) or not isinstance(value, kind)):
            raise _bad(root, f"decoding.{key} must be of type {kind.__name__}, got {value!r}")
    for key, value in (manifest.get("generation") or {}).items():
        if key not in GENERATION_DEFAULTS:
            raise _bad(root, f"generation.{key} is not a generation setting ({', '.join(GENERATION_DEFAULTS)})")
        if isinstance(value, bool) or not isinstance(value, type(GENERATION_DEFAULTS[key])) and not (
                isinstance(value, int) and isinstance(GENERATION_DEFAULTS[key], float)):
            raise _bad(root, f"generation.{key} is {value!r}, not a {type(GENERATION_DEFAULTS[key]).__name__}")
    tok = manifest["tokenizer"]
    if not isinstance(tok.get("file", A.TOKENIZER), str):
        raise _bad(root, f"tokenizer.file is {tok['file']!r}, not a file name")
    if tok.get("file", A.TOKENIZER) not in manifest["files"]:
        raise _bad(root, f"tokenizer file {tok.get('file', A.TOKENIZER)!r} is not listed under 'files'")
    if not isinstance(tok.get("eot_id"), int):
        raise _bad(root, "tokenizer.eot_id is missing or not an integer")


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
    check_manifest(root, manifest)
    try:
        config = ModelConfig.from_dict(manifest["config"])
    except ConfigError as exc:
        raise _bad(root, f"config: {exc}") from None
    if manifest.get("ops", A.PLAIN) not in A.OPS:
        raise _bad(root, f"ops {manifest['ops']!r} is not a graph variant this runtime knows ({', '.join(A.OPS)}); "
                         "upgrade flashlm or re-export with --ops plain")
    if not 0 <= manifest["tokenizer"]["eot_id"] < config.vocab_size:
        raise _bad(root, f"tokenizer.eot_id {manifest['tokenizer']['eot_id']} is outside the vocabulary ({config.vocab_size})")
    for rel, info in manifest["files"].items():
        file = root / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {A.MANIFEST} but missing; re-export with flashlm-export")
        if file.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {A.MANIFEST} says {info['bytes']} (truncated or modified); "
                                  "re-export or re-download")
    folder = ExportFolder(root, manifest, config, hash_files=verify != "none")
    if verify == "all":
        for rel in manifest["files"]:
            folder.verified(rel)
    return folder
