"""Torch sampling with the KV cache: the reference the ONNX runtime is tested against."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flashlm.model import FlashLMModel
from flashlm_core.generation import GENERATION_DEFAULTS, window_keep


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits (B, V) outside the top-k and outside the nucleus, with the seed's semantics:
    sort descending, drop tokens whose cumulative probability *before* them exceeds top_p
    (so the token that crosses top_p is kept, and the top token always is)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model: FlashLMModel,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = GENERATION_DEFAULTS["temperature"],
    top_k: int = 0,
    top_p: float = GENERATION_DEFAULTS["top_p"],
    seed: int | None = None,
    eos_id: int | None = None,
) -> list[int]:
    """Generate up to max_new_tokens after prompt_ids with the KV cache; returns the new ids.

    Past the context limit the window slides: the last `window_keep` tokens are re-prefilled at
    positions 0.. (see flashlm_core.generation.window_keep).
    """
    if not prompt_ids:
        raise ValueError("prompt_ids is empty; start from the end-of-text id instead")
    was_training = model.training
    model.eval()
    cfg = model.cfg
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    tokens = list(prompt_ids[-cfg.max_seq_len :])
    logits, _, past = model(torch.tensor([tokens]))
    cached = len(tokens)
    new: list[int] = []
    try:
        for _ in range(max_new_tokens):
            nxt = int(sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator))
            new.append(nxt)
            tokens.append(nxt)
            if eos_id is not None and nxt == eos_id:
                break
            if cached >= cfg.max_seq_len:  # the next position would be max_seq_len: slide
                tokens = tokens[-window_keep(cfg) :]
                logits, _, past = model(torch.tensor([tokens]))
                cached = len(tokens)
            else:
                logits, _, past = model(torch.tensor([[nxt]]), past_kv=past)
                cached += 1
    finally:
        model.train(was_training)
    return new
