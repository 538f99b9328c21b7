"""The FSP plan read-out: the content words the model expects in the next tau tokens."""
from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from flashlm_core.generation import PLAN_MIN_CHARS, PLAN_SKIP_WORDS


def plan_words(tokenizer: Tokenizer, fsp_logits: np.ndarray, *, k: int, content_only: bool) -> list[tuple[str, float]]:
    """The k most likely words of fsp_logits (vocab,), each once (most likely spelling), with the
    sigmoid probability of appearing; function words skipped when content_only."""
    words: dict[str, tuple[str, float]] = {}
    for t in np.argsort(-fsp_logits):
        word = tokenizer.decode([int(t)]).strip()
        skip = content_only and word.lower() in PLAN_SKIP_WORDS
        if len(word) >= PLAN_MIN_CHARS and word.isalpha() and not skip and word.lower() not in words:
            words[word.lower()] = (word, float(1.0 / (1.0 + np.exp(-fsp_logits[t]))))
            if len(words) == k:
                break
    return list(words.values())
