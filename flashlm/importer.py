"""flashlm-import: the seed script's checkpoints (fsp_best.pt, best.pt, a bare state_dict) as checkpoint folders."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from tokenizers import Tokenizer

from flashlm.checkpoint import save_checkpoint
from flashlm.model import FlashLMModel
from flashlm.recipes import recipe_config
from flashlm_core import artifacts as A
from flashlm_core import atomic
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError

# The seed's architecture (train_v10_fsp.py: GPT_FSP(4096, 256, 512, 8 heads, 4 layers), RMSNorm eps 1e-6, RoPE
# theta 10000 over interleaved pairs, attention scale 1/sqrt(head_dim), tied head, FSP projection): the project's
# ModelConfig defaults describe it, so the import keeps them and checks the tensors against them.
SEED_CONFIG = ModelConfig()


def seed_key_map(cfg: ModelConfig) -> dict[str, str]:
    """The seed's state_dict names -> FlashLMModel's, for the tensors copied as they are."""
    names = {"embed.weight": "tok_emb.weight", "ln_f.w": "norm.weight", "fsp_proj.weight": "fsp_proj.weight"}
    for i in range(cfg.n_layers):
        names |= {f"blocks.{i}.ln1.w": f"blocks.{i}.attn_norm.weight", f"blocks.{i}.ln2.w": f"blocks.{i}.ffn_norm.weight",
                  f"blocks.{i}.attn.qkv.weight": f"blocks.{i}.attn.wqkv.weight",  # both split (3, heads, head_dim) in that order
                  f"blocks.{i}.attn.out.weight": f"blocks.{i}.attn.wo.weight",
                  f"blocks.{i}.ffn.down.weight": f"blocks.{i}.ffn.w_down.weight"}
    return names


def seed_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """The RoPE frequencies the project computes (flashlm.model.rope_tables), as the seed stores them (head_dim/2,)."""
    half = cfg.head_dim // 2
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / cfg.head_dim))


def read_seed_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, info) from the seed's {"model", "step", "val_ppl"} dict or a bare state_dict; never unpickles code."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give the seed's fsp_best.pt (or best.pt)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types: a pickle with code, a truncated file, not a torch file
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({str(exc).splitlines()[0][:200]}); "
                              "give the seed's fsp_best.pt") from None
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        state, info = raw["model"], {"step": raw.get("step"), "val_ppl": raw.get("val_ppl")}
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, info = raw, {"step": None, "val_ppl": None}
    else:
        raise CheckpointError(f"{path}: neither the seed's {{'model': state_dict, 'step', 'val_ppl'}} nor a bare state_dict")
    for key in ("step", "val_ppl"):
        value = info[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            info[key] = value.item()
        if info[key] is not None and not isinstance(info[key], (int, float)):
            raise CheckpointError(f"{path}: '{key}' is {type(info[key]).__name__}, expected a number")
    return state, info


def seed_to_flashlm(state: dict[str, torch.Tensor], cfg: ModelConfig, *, where: str) -> dict[str, torch.Tensor]:
    """FlashLMModel's state_dict from the seed's, with every check the import promises (one CheckpointError each)."""
    names = seed_key_map(cfg)
    expected = set(names) | {f"blocks.{i}.{k}" for i in range(cfg.n_layers)
                             for k in ("attn.inv_freq", "ffn.gate.weight", "ffn.up.weight")}
    bad_type = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad_type:
        raise CheckpointError(f"{where}: {bad_type[0]} is not a tensor")
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing:
        raise CheckpointError(f"{where}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}: not a FlashLM v10 FSP seed checkpoint")
    if unknown:
        raise CheckpointError(f"{where}: unknown tensors {unknown[:4]}{' ...' if len(unknown) > 4 else ''}: not a FlashLM v10 FSP seed checkpoint")
    want = {n: tuple(p.shape) for n, p in FlashLMModel(cfg).state_dict().items()}
    out = {}
    for seed_name, name in names.items():
        out[name] = state[seed_name].float()
    for i in range(cfg.n_layers):
        out[f"blocks.{i}.ffn.w_gate_up.weight"] = torch.cat([state[f"blocks.{i}.ffn.gate.weight"], state[f"blocks.{i}.ffn.up.weight"]]).float()
        inv_freq = state[f"blocks.{i}.attn.inv_freq"]
        if inv_freq.shape != (cfg.head_dim // 2,) or not torch.allclose(inv_freq.float(), seed_inv_freq(cfg), rtol=1e-6, atol=0):
            raise CheckpointError(f"{where}: blocks.{i}.attn.inv_freq is not RoPE theta {cfg.rope_theta:g} over head_dim "
                                  f"{cfg.head_dim}: this checkpoint's positions differ from FlashLM's")
    for name, shape in want.items():
        if tuple(out[name].shape) != shape:
            raise CheckpointError(f"{where}: {name} has shape {tuple(out[name].shape)}, FlashLM v10 FSP needs {shape}")
        if not torch.isfinite(out[name]).all():
            raise CheckpointError(f"{where}: {name} holds NaN or Inf; import an earlier checkpoint")
    return out


def check_tokenizer(path: Path, cfg: ModelConfig) -> Tokenizer:
    """The tokenizer the seed trained with: readable, with <|endoftext|>, its vocabulary the embedding's rows."""
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise CheckpointError(f"{path}: not a tokenizers JSON file ({str(exc)[:200]}); give the seed's data_v10/tokenizer.json") from None
    if tok.get_vocab_size() != cfg.vocab_size:
        raise CheckpointError(f"{path}: {tok.get_vocab_size()} tokens, but the checkpoint's embedding has {cfg.vocab_size} rows: "
                              "give the tokenizer this checkpoint was trained with")
    if tok.token_to_id(A.EOT) is None:
        raise CheckpointError(f"{path}: no {A.EOT} token; give the seed's data_v10/tokenizer.json")
    return tok


def import_seed(checkpoint: str | Path, *, tokenizer: str | Path, out: str | Path, force: bool = False) -> dict:
    """Write `out` as a FlashLM checkpoint folder from a seed checkpoint and its tokenizer; returns its provenance."""
    checkpoint, tokenizer, out = Path(checkpoint), Path(tokenizer), Path(out)
    with atomic.exclusive(out, what="import"):
        return _import_locked(checkpoint, tokenizer, out, force=force)


def _import_locked(checkpoint: Path, tokenizer: Path, out: Path, *, force: bool) -> dict:
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")
    cfg = SEED_CONFIG
    state, info = read_seed_checkpoint(checkpoint)
    check_tokenizer(tokenizer, cfg)
    weights = seed_to_flashlm(state, cfg, where=str(checkpoint))
    model = FlashLMModel(cfg)
    model.load_state_dict(weights, strict=True)
    provenance = {"format": "seed train_v10_fsp.py", "file": str(checkpoint.resolve()),
                  "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(), "step": info["step"],
                  "seed_val_ppl": info["val_ppl"] if info["val_ppl"] is None or math.isfinite(info["val_ppl"]) else None}
    step = info["step"] if isinstance(info["step"], int) else 0
    save_checkpoint(out, model, train_cfg=recipe_config("seed"), tokenizer_path=tokenizer,
                    info={"step": step, "tokens_seen": None, "val_ppl_subset": None, "imported": provenance})
    return provenance
