"""Next-token sampling in numpy: temperature, top-k, nucleus (the seed's semantics), repetition penalty."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flashlm_core.errors import CheckpointError, ConfigError
from flashlm_core.generation import GENERATION_DEFAULTS

GREEDY_BELOW = 1e-4  # temperatures this small pick the top token (what sampling tends to as temperature -> 0)
NUCLEUS_GAPS = (4.0, 8.0, 16.0, np.inf)  # logit distances from the best token tried for the nucleus, widest last


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = GENERATION_DEFAULTS["temperature"]
    top_k: int = 0
    top_p: float = GENERATION_DEFAULTS["top_p"]
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (self.temperature >= 0):
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (self.repetition_penalty > 0) or not math.isfinite(self.repetition_penalty):
            raise ConfigError(f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty}")
        if not math.isfinite(self.temperature):
            raise ConfigError(f"temperature must be finite, got {self.temperature}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL/HF rule on a copy: divide positive logits of seen tokens by penalty, multiply negative ones."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick one id from logits (V,). Matches flashlm.generate.filter_logits: top-k first, then the
    nucleus over the renormalised survivors, keeping every token whose preceding cumulative
    probability is <= top_p (so the crossing token, and always the top token, stay).

    Hot path (once per token): ndarray methods, no full sort; ~25 us for a 4,096 vocabulary.
    """
    top = logits.max()
    if not np.isfinite(top):
        raise CheckpointError(f"the model produced {top} logits: the export is broken; re-export a good checkpoint")
    if params.temperature < GREEDY_BELOW:  # the limit of sampling as temperature -> 0, without overflow
        return int(logits.argmax())
    # shift before scaling: at temperature 1e-7 the raw logits * 1e7 overflow float32
    x = (logits.astype(np.float32) - top) * np.float32(1.0 / params.temperature)
    cand = None  # None = the whole vocabulary, else the top-k ids that x now holds
    if params.top_k and params.top_k < x.size:
        cand = x.argpartition(x.size - params.top_k)[x.size - params.top_k:]
        x = x[cand]
    top = x.max()
    e = np.exp(x - top)  # unnormalised probabilities
    total = float(e.sum(dtype=np.float64))
    if params.top_p >= 1.0:
        idx, p = None, e
    else:
        # Sort only the tokens within `gap` logits of the best; widen while their mass is <= top_p.
        # Every token left out is less likely than every token sorted, so the nucleus is exact.
        for gap in NUCLEUS_GAPS:
            sel = (x > top - gap).nonzero()[0] if gap != np.inf else np.arange(e.size)
            es = e[sel]
            order = (-es).argsort(kind="stable")
            cum = es[order].cumsum(dtype=np.float64)
            if cum[-1] > params.top_p * total:
                break
        n_keep = 1 + int(np.searchsorted(cum[:-1], params.top_p * total, side="right"))
        idx = sel[order[:n_keep]]
        p = es[order[:n_keep]]
    cdf = p.cumsum(dtype=np.float64)
    i = min(int(cdf.searchsorted(rng.random() * cdf[-1], side="right")), cdf.size - 1)
    if idx is not None:
        i = int(idx[i])
    return i if cand is None else int(cand[i])
