"""A prompt's last tokens, tokenized in bounded memory: only the tail the context keeps is tokenized whole; the
dropped head is counted in chunks cut where the tokenizer's own pre-tokenization would split anyway."""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

WHOLE_BELOW = 1 << 16  # prompts shorter than this many characters are tokenized in one call
CHUNK = 1 << 18  # characters of the dropped head tokenized at a time, only to count its tokens
COUNT_BELOW = 1 << 22  # a dropped head up to this many characters is counted in tokens; a longer one is not (None)
TAIL_CHARS_PER_TOKEN = 16  # first guess of the characters the kept tokens span (doubled until enough)


@dataclass(frozen=True)
class PromptTail:
    """What a prompt becomes: the ids the model reads and what was dropped from the front to fit `limit`."""

    ids: list[int]
    dropped_tokens: int | None  # None: the dropped head is longer than COUNT_BELOW characters and was not counted
    dropped_chars: int  # the text the model reads is prompt[dropped_chars:]


def safe_cut(text: str, pos: int) -> int:
    """A position at or after `pos` where a word starts after a single space (" word" with a non-space before it):
    the GPT-2 byte-level pre-tokenizer splits there in any text, so tokens after it do not depend on what came
    before. Falls back to `pos` in text without such a place (a very long run of one word or of symbols)."""
    end = min(len(text) - 1, pos + 4096)
    for i in range(max(1, pos), end):
        if text[i] == " " and text[i + 1].isalnum() and not text[i - 1].isspace():
            return i
    return pos


def count_tokens(tok: Tokenizer, text: str) -> int:
    """len(tok.encode(text).ids), chunk by chunk (memory bounded by CHUNK, whatever the text's length)."""
    n, start = 0, 0
    while start < len(text):
        stop = len(text) if len(text) - start <= CHUNK else safe_cut(text, start + CHUNK)
        n += len(tok.encode(text[start:stop]).ids)
        start = stop
    return n


def prompt_tail(tok: Tokenizer, text: str, limit: int) -> PromptTail:
    """The last `limit` tokens of text (as tokenizing it whole would give them), and what was dropped."""
    if len(text) < WHOLE_BELOW:
        enc = tok.encode(text)
        if len(enc.ids) <= limit:
            return PromptTail(enc.ids, 0, 0)
        return PromptTail(enc.ids[-limit:], len(enc.ids) - limit, enc.offsets[-limit][0])
    span = limit * TAIL_CHARS_PER_TOKEN
    while True:
        cut = safe_cut(text, max(0, len(text) - span)) if span < len(text) else 0
        enc = tok.encode(text[cut:])
        if len(enc.ids) >= limit or cut == 0:
            break
        span *= 2
    kept = enc.ids[-limit:]
    start = cut + (enc.offsets[-len(kept)][0] if kept else 0)
    head = count_tokens(tok, text[:cut]) if cut <= COUNT_BELOW else None
    return PromptTail(kept, None if head is None else head + len(enc.ids) - len(kept), start)
