"""Generation policy shared by torch sampling and the runtime: sampling defaults and the context window (stdlib only)."""
from __future__ import annotations

from flashlm_core.config import ModelConfig

# The seed's sampling (temperature 0.8, top-p 0.9); written to generation_config.json and the manifest.
GENERATION_DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0, "max_new_tokens": 200}
SAMPLE_PROMPTS = ("Once upon a time", "A cat sat", "The little girl")  # the seed's three prompts


def window_keep(cfg: ModelConfig) -> int:
    """Tokens kept when generation reaches the context limit: they are re-prefilled at positions 0..keep-1.

    The model never saw positions >= max_seq_len, so instead of shifting positions we drop the oldest
    quarter of the window and recompute the cache. Torch and runtime generators share this policy.
    """
    return max(1, cfg.max_seq_len * 3 // 4)
