"""Checkpoint folders: model.safetensors, config.json, tokenizer.json, train_state.pt; written atomically."""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flashlm.model import FlashLMModel
from flashlm.recipes import TrainConfig
from flashlm_core import artifacts as A
from flashlm_core import atomic
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError
from flashlm_core.versioned import FORMAT_VERSION, read_versioned_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = A.TOKENIZER
TRAIN_STATE = "train_state.pt"  # optimizer + RNG; tensors and plain data, loaded with weights_only=True
DISK_NEARLY_FULL = 4 << 20  # bytes free below which a failed write is taken for a full disk


def save_checkpoint(path, model: FlashLMModel, *, train_cfg: TrainConfig, tokenizer_path, info: dict, train_state: dict | None = None) -> None:
    """Write the checkpoint folder at `path` atomically (temp folder, then rename)."""
    with atomic.atomic_dir(path) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with _write_failures(tmp):
            save_file(weights, str(tmp / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
        atomic.normal_mode(tmp / WEIGHTS)  # safetensors writes 0600 (its temp file); give it the others' mode
        atomic.write_json(tmp / CONFIG, {
            "format_version": FORMAT_VERSION,
            "model": model.cfg.to_dict(),
            "train": train_cfg.to_dict(),
            **info,
        })
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER)
        if train_state is not None:
            with _write_failures(tmp):
                torch.save(train_state, tmp / TRAIN_STATE)


@contextmanager
def _write_failures(folder: Path):
    """torch.save and safetensors report a failed write (a full disk) as RuntimeError or SafetensorError, not OSError:
    made an OSError with the errno the disk says, so the command prints its one line."""
    try:
        yield
    except (RuntimeError, SafetensorError) as exc:
        code = errno.ENOSPC if shutil.disk_usage(folder).free < DISK_NEARLY_FULL else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (writing the checkpoint failed: {str(exc).splitlines()[0][:160]})",
                      str(folder.parent)) from None


def read_config(path) -> dict:
    """config.json of a checkpoint folder, version-checked, with ModelConfig/TrainConfig parsed."""
    raw = read_versioned_json(path, CONFIG, kind="checkpoint", make="train one with flashlm-train",
                              fix="use another checkpoint (best/ or last/)")
    return {**raw, "model": ModelConfig.from_dict(raw.get("model")), "train": TrainConfig.from_dict(raw.get("train"))}


def load_checkpoint(path, *, dropout: float = 0.0, attention: str = "sdpa") -> tuple[FlashLMModel, dict]:
    """Load (model in eval mode, config dict) from a checkpoint folder; never unpickles."""
    path = Path(path)
    config = read_config(path)
    model = FlashLMModel(config["model"], dropout=dropout, attention=attention)
    try:
        weights = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {WEIGHTS}") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path / WEIGHTS}: corrupt ({exc}); use another checkpoint (best/ or last/)") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path / WEIGHTS}: weights do not match config.json: {exc}") from None
    if not (path / TOKENIZER).is_file():
        raise CheckpointError(f"{path}: no {TOKENIZER}")
    model.eval()
    return model, config


def load_train_state(path) -> dict:
    state_path = Path(path) / TRAIN_STATE
    if not state_path.is_file():
        raise CheckpointError(f"{path}: no {TRAIN_STATE}; this checkpoint cannot be resumed (weights only)")
    try:
        return torch.load(state_path, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt pickles
        raise CheckpointError(f"{state_path}: unreadable ({exc})") from None
