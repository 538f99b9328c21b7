"""Generation policy shared by torch sampling and the runtime: sampling defaults and the context window (stdlib only)."""
from __future__ import annotations

from flashlm_core.config import ModelConfig

# The seed's sampling (temperature 0.8, top-p 0.9); written to generation_config.json and the manifest.
GENERATION_DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0, "max_new_tokens": 200}
SAMPLE_PROMPTS = ("Once upon a time", "A cat sat", "The little girl")  # the seed's three prompts
GREEDY_BELOW = 1e-4  # temperatures this small pick the top token (what sampling tends to as temperature -> 0)

# Function words that are nearly certain to appear in any 64-token stretch of a story; the plan read-out skips them
# so that it shows what the story is about.
PLAN_SKIP_WORDS = frozenset(
    "a an the and or but so to of in on at for with from by as is was were be been are am it its he she his her "
    "him they them their we our you your i me my that this there then than not no all very said up down out "
    "into one day time had have has did do does what when who would could can will just too".split())
PLAN_MIN_CHARS = 2  # a plan word is at least this many letters


def window_keep(cfg: ModelConfig) -> int:
    """Tokens kept when generation reaches the context limit: they are re-prefilled at positions 0..keep-1.

    The model never saw positions >= max_seq_len, so instead of shifting positions we drop the oldest
    quarter of the window and recompute the cache. Torch and runtime generators share this policy.
    """
    return max(1, cfg.max_seq_len * 3 // 4)


DECODING_TYPES = {"window_keep": int, "greedy_below": float, "plan_skip_words": list, "plan_min_chars": int}


def client_rules(cfg: ModelConfig) -> dict:
    """The decoding rules a client that runs the graphs itself must follow, as the manifest's typed 'decoding' field."""
    return {"window_keep": window_keep(cfg), "greedy_below": GREEDY_BELOW,
            "plan_skip_words": sorted(PLAN_SKIP_WORDS), "plan_min_chars": PLAN_MIN_CHARS}
