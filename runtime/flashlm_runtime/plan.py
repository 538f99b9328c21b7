"""The FSP plan read-out: the content words the model expects in the next tau tokens."""
from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

# Function words that are nearly certain to appear in any 64-token stretch of a story; the plan
# read-out skips them so that it shows what the story is about (pass content_only=False to keep them).
FUNCTION_WORDS = frozenset(
    "a an the and or but so to of in on at for with from by as is was were be been are am it its he she his her "
    "him they them their we our you your i me my that this there then than not no all very said up down out "
    "into one day time had have has did do does what when who would could can will just too".split())


def plan_words(tokenizer: Tokenizer, fsp_logits: np.ndarray, *, k: int, content_only: bool) -> list[tuple[str, float]]:
    """The k most likely words of fsp_logits (vocab,), each once (most likely spelling), with the
    sigmoid probability of appearing; function words skipped when content_only."""
    words: dict[str, tuple[str, float]] = {}
    for t in np.argsort(-fsp_logits):
        word = tokenizer.decode([int(t)]).strip()
        skip = content_only and word.lower() in FUNCTION_WORDS
        if len(word) >= 2 and word.isalpha() and not skip and word.lower() not in words:
            words[word.lower()] = (word, float(1.0 / (1.0 + np.exp(-fsp_logits[t]))))
            if len(words) == k:
                break
    return list(words.values())
