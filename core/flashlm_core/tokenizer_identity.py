"""Whether two tokenizer.json files tokenize alike: compared by content (vocabulary, merges, special tokens,
normalisation, pre-tokenisation, decoding), not by bytes: tokenizers' `save()` and `to_str()` differ in
formatting only, and so do files of different tokenizers versions (stdlib only)."""
from __future__ import annotations

import json
from pathlib import Path

from flashlm_core.errors import ConfigError

MAX_TOKENIZER_BYTES = 50_000_000  # a BPE-4096 tokenizer.json is ~0.3 MB; anything this large is not one


def tokenizer_content(path) -> dict:
    """The parts of a tokenizer.json that decide how text becomes ids and back, in one canonical form."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a tokenizer.json")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such tokenizer file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a tokenizer.json ({exc})") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise ConfigError(f"{path}: not a tokenizer.json (no model vocabulary)")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    special = sorted((t.get("content"), t.get("id"), bool(t.get("special"))) for t in raw.get("added_tokens") or [])
    return {"type": model.get("type"), "vocab": model["vocab"], "merges": merges, "special": special,
            "byte_fallback": model.get("byte_fallback"), "unk_token": model.get("unk_token"),
            "normalizer": raw.get("normalizer"), "pre_tokenizer": raw.get("pre_tokenizer"), "decoder": raw.get("decoder")}


def tokenizer_difference(a, b) -> str | None:
    """None when tokenizer files a and b tokenize alike, else what differs first (for an error message)."""
    ca, cb = tokenizer_content(a), tokenizer_content(b)
    for key in ca:
        if ca[key] != cb[key]:
            if key == "vocab":
                moved = sum(1 for t, i in ca[key].items() if cb[key].get(t) != i)
                return f"vocabularies differ ({moved} of {len(ca[key])} tokens are missing or have another id in the other's {len(cb[key])})"
            if key == "merges":
                return f"BPE merges differ ({len(ca[key])} and {len(cb[key])} merges)"
            return f"{key.replace('_', ' ')} differs"
    return None
