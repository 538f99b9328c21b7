"""Streaming detokenization: text in UTF-8-safe pieces, with stop strings held back until they are ruled out."""
from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class TextStream:
    """Incremental detokenizer that never splits a UTF-8 character and holds back possible stop strings."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.decoder = DecodeStream(skip_special_tokens=True)
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # all decoded text so far
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        chunk = self.decoder.step(self.tokenizer, token_id)
        if chunk:
            self.text += chunk
        for s in self.stops:
            i = self.text.find(s, max(0, self.emitted - len(s)))
            if i != -1:
                self.text = self.text[:i]
                self.stopped = True
        safe = len(self.text) if self.stopped else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted:safe]
        self.emitted = safe
        return out

    def flush(self) -> str:
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out
