"""One generating row's state (its RNG, penalties, text stream, finish) and the sampling of a group of rows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.random import default_rng
from tokenizers import Tokenizer

from flashlm_runtime.sampling import SamplingParams, apply_penalties, sample_rows
from flashlm_runtime.textstream import TextStream


@dataclass
class Piece:
    """One streamed step: the new text (may be '' while a UTF-8 character is incomplete) and the token id
    (-1 for text flushed at the end, which belongs to no new token)."""

    text: str
    token_id: int


class RowState:
    """What one prompt's generation carries from step to step. `finish` is None while it runs, then
    "length" | "eos" | "stop"; `accept(token)` takes its next token and returns the pieces of text it frees."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams, *, max_new_tokens: int,
                 stops: tuple[str, ...], stop_at_eos: bool, eot_id: int):
        self.params = params
        self.rng = default_rng(params.seed)
        self.text = TextStream(tokenizer, stops)
        self.seen = np.array(sorted(set(prompt_ids)), np.int64)  # for the repetition penalty: prompt and text so far
        self.counts: dict[int, int] = {}  # generated token -> times, for presence and frequency penalties
        self.max_new_tokens = max_new_tokens
        self.stop_at_eos = stop_at_eos
        self.eot_id = eot_id
        self.n_new = 0  # tokens taken (an <|endoftext|> that ends the row included)
        self.finish: str | None = None if max_new_tokens > 0 else "length"

    def penalized(self, logits: np.ndarray) -> np.ndarray:
        """This row's logits (V,) with its penalties (a copy when any applies)."""
        generated = np.fromiter(self.counts, np.int64, len(self.counts))
        counts = np.fromiter(self.counts.values(), np.float32, len(self.counts))
        return apply_penalties(logits, self.params, seen=self.seen, generated=generated, counts=counts)

    def accept(self, token: int) -> list[Piece]:
        self.n_new += 1
        if self.params.repetition_penalty != 1.0 and token not in self.seen:
            self.seen = np.append(self.seen, token)
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.stop_at_eos and token == self.eot_id:
            self.finish = "eos"
            return self._tail()
        pieces = [Piece(self.text.push(token), token)]
        if self.text.stopped:
            self.finish = "stop"
        elif self.n_new >= self.max_new_tokens:
            self.finish = "length"
            pieces += self._tail()
        return pieces

    def end(self, reason: str) -> list[Piece]:
        """Finish the row from outside (e.g. a server shutting down) with `reason`; returns the text still held back."""
        self.finish = reason
        return self._tail()

    def _tail(self) -> list[Piece]:
        tail = self.text.flush()
        return [Piece(tail, -1)] if tail else []


def sample_group(states: list[RowState], logits: np.ndarray, top: tuple[np.ndarray, np.ndarray] | None) -> list[int]:
    """The next token of each row of a group that shares its SamplingParams (up to the seed): logits (len(states), V),
    top the graph's top outputs of those rows at the params' temperature, or None. Penalties rule the top outputs out."""
    params = states[0].params
    if params.penalized:
        logits, top = np.stack([s.penalized(row) for s, row in zip(states, logits)]), None
    return sample_rows(logits, params, [s.rng for s in states], top)
