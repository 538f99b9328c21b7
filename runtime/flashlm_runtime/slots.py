"""Decode loops whose rows join and leave between steps (continuous batching), for both graph variants."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from flashlm_core import artifacts as A
from flashlm_core.config import ModelConfig
from flashlm_runtime.engine import Engine
from flashlm_runtime.shared_kv import SharedKVEngine


class SlotLoop:
    """What a slot loop offers on top of a decode loop: `n` rows in use (rows 0..n-1), `join(prompt)` prefills a new
    row n alone and returns its next-token logits (V,), `leave(row)` frees a row by moving the last row into it, and
    `step(tokens)` (one token per row in use) returns logits (n, V). A row that joins a loop with no other row runs
    exactly the calls `FlashLM.stream` makes for its prompt alone, so it gives exactly its tokens."""

    n: int


class PlainSlots(Engine, SlotLoop):
    """Plain graphs: the Engine's left-padded, right-aligned cache, widened on the left when a longer row joins."""

    def __init__(self, session: ort.InferenceSession, cfg: ModelConfig, *, pad_id: int, slots: int):
        super().__init__(session, cfg, pad_id=pad_id)
        self.slots = slots
        self.n = 0

    def join(self, prompt: list[int]) -> np.ndarray:
        logits, presents, mask, hidden = self._prefill_rows([list(prompt)])
        if self.n == 0:
            self.windows, self.past, self.mask, self.hidden = [list(prompt)], list(presents), mask, hidden
        else:
            T = max(self.mask.shape[1], mask.shape[1])
            self.past = [np.concatenate([_left_pad(p, T), _left_pad(q, T)]) for p, q in zip(self.past, presents)]
            self.mask = np.concatenate([_left_pad(self.mask, T), _left_pad(mask, T)])
            self.hidden = np.concatenate([self.hidden, hidden])
            self.windows.append(list(prompt))
        self.n += 1
        return logits[0]

    def leave(self, row: int) -> None:
        last = self.n - 1
        keep = list(range(last))
        if row != last:
            keep[row] = last  # the last row moves into the freed one
            self.windows[row] = self.windows[last]
        self.windows.pop()
        self.n -= 1
        if self.n == 0:
            self.past, self.mask = [], np.zeros((0, 0), np.int64)
            return
        mask = self.mask[keep]
        start = int(np.argmax(mask.any(0)))  # drop the columns that only the leaving row used
        self.mask = np.ascontiguousarray(mask[:, start:])
        self.past = [np.ascontiguousarray(p[keep][:, :, start:]) for p in self.past]
        self.hidden = self.hidden[keep]


def _left_pad(a: np.ndarray, T: int) -> np.ndarray:
    """a (B, T_a) or (B, H, T_a, hd) with zeros prepended on its sequence axis up to T."""
    axis = 1 if a.ndim == 2 else 2
    missing = T - a.shape[axis]
    if missing == 0:
        return a
    shape = list(a.shape)
    shape[axis] = missing
    return np.concatenate([np.zeros(shape, a.dtype), a], axis=axis)


class ContribSlots(SharedKVEngine, SlotLoop):
    """Contrib graphs: `slots` rows of (slots, H, max_seq_len, hd) buffers bound once; a step over the first n rows
    binds views of their first n rows (contiguous, so no copy), one binding per n, made on first use."""

    def __init__(self, session: ort.InferenceSession, cfg: ModelConfig, *, pad_id: int, slots: int):
        super().__init__(session, cfg, pad_id=pad_id)
        self.slots = slots
        self._allocate(slots)
        self._bindings: dict[int, ort.IOBinding] = {slots: self._step_io}
        self.n = 0
        self.windows = []

    def _binding(self, n: int) -> ort.IOBinding:
        """The step's IOBinding over rows 0..n-1 of every bound buffer."""
        if n not in self._bindings:
            io = self.session.io_binding()
            io.bind_ortvalue_input(A.INPUT_IDS, self._bound(self._ids[:n]))
            io.bind_ortvalue_input(A.ATTENTION_MASK, self._bound(self._mask[:n]))
            io.bind_ortvalue_input(A.TEMPERATURE, self._bound(self._temperature))
            for i in range(self.cfg.n_layers):
                for j, (past, present) in enumerate(((A.past_key(i), A.present_key(i)), (A.past_value(i), A.present_value(i)))):
                    value = self._bound(self.kv[2 * i + j][:n])
                    io.bind_ortvalue_input(past, value)
                    io.bind_ortvalue_output(present, value)
            io.bind_ortvalue_output(A.LOGITS, self._bound(self._logits[:n]))
            io.bind_ortvalue_output(A.LAST_HIDDEN, self._bound(self._hidden[:n]))
            io.bind_ortvalue_output(A.TOP_PROBS, self._bound(self._top[0][:n]))
            io.bind_ortvalue_output(A.TOP_IDS, self._bound(self._top[1][:n]))
            self._bindings[n] = io
        return self._bindings[n]

    def join(self, prompt: list[int]) -> np.ndarray:
        """Prefill row n alone, through views of its rows of the buffers (what SharedKVEngine.prefill runs at batch 1)."""
        r, T = self.n, len(prompt)
        self.windows.append(list(prompt))
        self._mask[r] = 0
        self._mask[r, :T] = 1
        self.lengths[r] = T
        io = self.session.io_binding()
        io.bind_cpu_input(A.INPUT_IDS, np.asarray([prompt], np.int64))
        io.bind_cpu_input(A.ATTENTION_MASK, np.ones((1, T), np.int64))
        for i in range(self.cfg.n_layers):
            for j, (past, present) in enumerate(((A.past_key(i), A.present_key(i)), (A.past_value(i), A.present_value(i)))):
                value = ort.OrtValue.ortvalue_from_numpy(self.kv[2 * i + j][r : r + 1])  # kept alive by this call only
                io.bind_ortvalue_input(past, value)
                io.bind_ortvalue_output(present, value)
        io.bind_output(A.LOGITS)
        io.bind_output(A.LAST_HIDDEN)
        self.session.run_with_iobinding(io)
        logits, hidden = (v.numpy() for v in io.get_outputs()[-2:])  # (1, T, V), (1, T, dim)
        self._hidden[r, 0] = hidden[0, -1]
        self.n += 1
        return logits[0, -1]

    def leave(self, row: int) -> None:
        last = self.n - 1
        if row != last:
            n = int(self.lengths[last])
            for kv in self.kv:
                kv[row, :, :n] = kv[last, :, :n]
            self._mask[row] = self._mask[last]
            self.lengths[row] = n
            self._hidden[row] = self._hidden[last]
            self.windows[row] = self.windows[last]
        self.windows.pop()
        self._mask[last] = 0
        self.lengths[last] = 0
        self.n -= 1

    def step(self, tokens: list[int]) -> np.ndarray:
        """Append one token to each of rows 0..n-1 and return their next logits (n, V)."""
        n = len(tokens)
        sliding = [r for r in range(n) if self.lengths[r] >= self.cfg.max_seq_len]
        for r, t in enumerate(tokens):
            self.windows[r].append(int(t))
        if sliding:
            self._restart(sliding)
        if n == 1:  # scalar writes, as SharedKVEngine.step
            self._ids[0, 0] = tokens[0]
            self._mask[0, self.lengths[0]] = 1
        else:
            self._ids[:n, 0] = tokens
            self._mask[np.arange(n), self.lengths[:n]] = 1
        self.lengths[:n] += 1
        self._temperature[0] = self.temperature
        self.session.run_with_iobinding(self._binding(n))
        self.hidden = self._hidden[:n, 0]
        self.top = (self._top[0][:n], self._top[1][:n])
        return self._logits[:n, 0]


def slot_loop(session: ort.InferenceSession, cfg: ModelConfig, *, ops: str, pad_id: int, slots: int) -> SlotLoop:
    """The slot loop for an export's graph variant."""
    kind = ContribSlots if ops == A.CONTRIB else PlainSlots
    return kind(session, cfg, pad_id=pad_id, slots=slots)
