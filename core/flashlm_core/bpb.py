"""Bits per byte: the UTF-8 bytes each token stands for, so quality compares across tokenizers (numpy, no torch)."""
from __future__ import annotations

import json
import math

import numpy as np

# A special token (<|endoftext|>) stands for the story separator: one byte, as the seed's
# bits-per-byte counts it (each story's UTF-8 bytes + 1).
SPECIAL_TOKEN_BYTES = 1


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (what a byte-level BPE vocab is spelled in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_byte_lengths(tokenizer) -> np.ndarray:
    """(vocab,) int64: how many bytes of text each token id decodes to (a `tokenizers.Tokenizer`)."""
    spec = json.loads(tokenizer.to_str())
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    alphabet = _byte_level_alphabet()
    lengths = np.zeros(tokenizer.get_vocab_size(), np.int64)
    for piece, i in tokenizer.get_vocab().items():
        if i in special:
            lengths[i] = SPECIAL_TOKEN_BYTES
        elif byte_level and all(c in alphabet for c in piece):
            lengths[i] = len(piece)  # one stand-in character per byte
        else:
            lengths[i] = len(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
    return lengths


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood (nats) over the scored text, in bits per UTF-8 byte of that text."""
    return nll_nats / math.log(2) / max(1, n_bytes)
