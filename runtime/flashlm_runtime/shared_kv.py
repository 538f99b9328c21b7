"""The decode loop for contrib graphs: a KV cache written in place, every buffer bound once (IOBinding)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from flashlm_core import artifacts as A
from flashlm_runtime.engine import DecodeLoop
from flashlm_runtime.session import backbone_feeds, empty_past


class SharedKVEngine(DecodeLoop):
    """The decode loop for a contrib graph.

    Each cache tensor is one (B, H, max_seq_len, hd) numpy buffer bound as both past and present, so
    GroupQueryAttention appends a step's keys in place: no copy of the cache per step, where the plain
    graph's Concat copies all of it (a large share of a plain int8 step, bench/decode_profile.py). Rows are
    right-padded: row r's tokens sit at positions 0..n_r-1 and its mask row holds n_r ones, so rows of
    different lengths need no padding columns at all. A decode step only writes the token ids and one
    mask entry per row into buffers that are already bound, then runs; logits come back in a bound buffer.
    When a row would need position max_seq_len, its last `keep` tokens but one are prefilled alone at
    positions 0.. into its rows of the buffers, and the step then appends the last one: the same
    attention as the plain Engine's re-prefill of `keep` tokens.
    """

    def _bind_cache(self, io: ort.IOBinding) -> None:
        for i in range(self.cfg.n_layers):
            for j, (past, present) in enumerate(((A.past_key(i), A.present_key(i)), (A.past_value(i), A.present_value(i)))):
                io.bind_ortvalue_input(past, self._kv_values[2 * i + j])
                io.bind_ortvalue_output(present, self._kv_values[2 * i + j])

    def _bound(self, array: np.ndarray) -> ort.OrtValue:
        """An OrtValue over array's memory, kept alive with the engine (a binding does not keep it)."""
        value = ort.OrtValue.ortvalue_from_numpy(array)
        self._keep_alive.append(value)
        return value

    def _allocate(self, batch: int) -> None:
        cfg = self.cfg
        self._keep_alive: list[ort.OrtValue] = []
        self.kv = [np.zeros(cfg.kv_shape(batch, cfg.max_seq_len), np.float32) for _ in range(2 * cfg.n_layers)]
        self._kv_values = [self._bound(a) for a in self.kv]
        self.lengths = np.zeros(batch, np.int64)  # real tokens in each row's cache
        # decode-step buffers, bound once: ids (B, 1), mask (B, max_seq_len), temperature (1,), logits (B, 1, V),
        # hidden (B, 1, dim), top probabilities and ids (B, TOP_N)
        self._ids = np.zeros((batch, 1), np.int64)
        self._mask = np.zeros((batch, cfg.max_seq_len), np.int64)
        self._temperature = np.ones(1, np.float32)
        self._logits = np.zeros((batch, 1, cfg.vocab_size), np.float32)
        self._hidden = np.zeros((batch, 1, cfg.dim), np.float32)
        self._top = (np.zeros((batch, A.TOP_N), np.float32), np.zeros((batch, A.TOP_N), np.int64))
        self._step_io = self.session.io_binding()
        self._step_io.bind_ortvalue_input(A.INPUT_IDS, self._bound(self._ids))
        self._step_io.bind_ortvalue_input(A.ATTENTION_MASK, self._bound(self._mask))
        self._step_io.bind_ortvalue_input(A.TEMPERATURE, self._bound(self._temperature))
        self._bind_cache(self._step_io)
        self._step_io.bind_ortvalue_output(A.LOGITS, self._bound(self._logits))
        self._step_io.bind_ortvalue_output(A.LAST_HIDDEN, self._bound(self._hidden))
        self._step_io.bind_ortvalue_output(A.TOP_PROBS, self._bound(self._top[0]))
        self._step_io.bind_ortvalue_output(A.TOP_IDS, self._bound(self._top[1]))

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        """Start the batch from prompts (each at most max_seq_len tokens). Returns logits (B, V)."""
        self.windows = [list(p) for p in prompts]
        B, T = len(prompts), max(len(p) for p in prompts)
        self._allocate(B)
        ids = np.full((B, T), self.pad_id, np.int64)
        for r, w in enumerate(self.windows):
            ids[r, : len(w)] = w
            self._mask[r, : len(w)] = 1
            self.lengths[r] = len(w)
        io = self.session.io_binding()
        io.bind_cpu_input(A.INPUT_IDS, ids)
        io.bind_cpu_input(A.ATTENTION_MASK, np.ascontiguousarray(self._mask[:, :T]))  # (B, T): the prompt's columns
        self._bind_cache(io)
        io.bind_output(A.LOGITS)
        io.bind_output(A.LAST_HIDDEN)
        self.session.run_with_iobinding(io)
        logits, hidden = (v.numpy() for v in io.get_outputs()[-2:])  # (B, T, V), (B, T, dim); a row ends at n_r - 1
        last = self.lengths - 1
        self.hidden = hidden[np.arange(B), last]
        self.top = None  # the graph's top outputs read position T - 1, which is not every row's last
        return logits[np.arange(B), last]

    def step(self, tokens: list[int]) -> np.ndarray:
        """Append one token per row and return the next logits (B, V)."""
        sliding = [r for r, n in enumerate(self.lengths) if n >= self.cfg.max_seq_len]
        for r, t in enumerate(tokens):
            self.windows[r].append(int(t))
        if sliding:
            self._restart(sliding)
        if len(tokens) == 1:  # scalar writes: a third of the fancy-indexing cost
            self._ids[0, 0] = tokens[0]
            self._mask[0, self.lengths[0]] = 1
        else:
            self._ids[:, 0] = tokens
            self._mask[np.arange(len(tokens)), self.lengths] = 1  # the new token's column in each row
        self.lengths += 1
        self._temperature[0] = self.temperature
        self.session.run_with_iobinding(self._step_io)
        self.hidden = self._hidden[:, 0]
        self.top = self._top
        return self._logits[:, 0]  # (B, V) views of the bound buffers (as are hidden and top): valid until the next step

    def _restart(self, rows: list[int]) -> None:
        """Refill rows' caches with their last keep - 1 tokens at positions 0.. (the step appends the newest)."""
        n = self.keep - 1
        for r in rows:
            self.windows[r] = self.windows[r][-self.keep:]
        ids = np.array([self.windows[r][:n] for r in rows], np.int64)  # equal lengths: one run, no padding
        feeds = backbone_feeds(self.cfg, ids, np.ones_like(ids), None, empty_past(self.cfg, len(rows)))
        presents = self.session.run(A.backbone_outputs(self.cfg, A.PLAIN), feeds)[1:-1]  # each (len(rows), H, n, hd)
        for k, r in enumerate(rows):
            for j, present in enumerate(presents):
                self.kv[j][r, :, :n] = present[k]
            self._mask[r] = 0
            self._mask[r, :n] = 1
            self.lengths[r] = n
