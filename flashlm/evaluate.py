"""Validation perplexity: token-weighted over the whole split, or over a fixed subset of windows."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from flashlm.model import FlashLMModel
from flashlm_core.bpb import bits_per_byte
from flashlm_core.errors import TrainingDivergedError


def windows(tokens: np.ndarray, seq_len: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, length) windows covering every target token of `tokens` once."""
    n_targets = len(tokens) - 1
    return [(s, min(seq_len, n_targets - s)) for s in range(0, n_targets, seq_len)]


@torch.no_grad()
def loss_sum(model: FlashLMModel, tokens: np.ndarray, spans: list[tuple[int, int]], *, batch_size: int = 16, bf16: bool = False) -> tuple[float, int]:
    """Sum of next-token CE (nats) and the token count over the given windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        # group equal lengths so the batch is rectangular (only the last window is shorter)
        for length in sorted({n for _, n in spans}):
            starts = [s for s, n in spans if n == length]
            for i in range(0, len(starts), batch_size):
                chunk = np.stack([tokens[s : s + length + 1] for s in starts[i : i + batch_size]]).astype(np.int64)
                x = torch.from_numpy(chunk[:, :-1])
                y = torch.from_numpy(chunk[:, 1:])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits, _, _ = model(x)
                total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
                count += y.numel()
    finally:
        model.train(was_training)
    return total, count


def perplexity(model: FlashLMModel, tokens: np.ndarray, *, seq_len: int, token_bytes: np.ndarray | None = None, batch_size: int = 16) -> dict:
    """Token-weighted loss and PPL over the whole token array (fp32), and bits per byte when
    token_bytes (vocab,) gives the UTF-8 bytes of each token (every target token is scored once)."""
    total, count = loss_sum(model, tokens, windows(tokens, seq_len), batch_size=batch_size)
    if not math.isfinite(total):
        raise TrainingDivergedError(f"the validation loss is {total}: the weights hold NaN/Inf; use another checkpoint")
    loss = total / count
    result = {"loss": loss, "ppl": math.exp(loss), "tokens": count}
    if token_bytes is not None:
        n_bytes = int(token_bytes[np.asarray(tokens[1:], dtype=np.int64)].sum())
        result.update(bpb=bits_per_byte(total, n_bytes), bytes=n_bytes)
    return result


def subset_spans(tokens: np.ndarray, *, seq_len: int, n_windows: int) -> list[tuple[int, int]]:
    """A fixed, evenly spaced subset of full-length windows for periodic evaluation."""
    all_spans = [w for w in windows(tokens, seq_len) if w[1] == seq_len]
    if len(all_spans) <= n_windows:
        return all_spans
    idx = np.linspace(0, len(all_spans) - 1, n_windows).round().astype(int)
    return [all_spans[i] for i in idx]
