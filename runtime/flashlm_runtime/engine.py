"""The KV-cache decode loop over a batch for plain graphs: left padding, per-row window slide."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from flashlm_core.config import ModelConfig
from flashlm_core.generation import window_keep
from flashlm_runtime.session import backbone_feeds, empty_past


class DecodeLoop:
    """What a decode loop holds and offers: prefill(prompts) and step(tokens) return logits (B, V); each row's
    token window; the final-norm hidden state of each row's last position (B, dim) after every run; `top`, the
    graph's (probabilities, ids) of each row's TOP_N likeliest next tokens at `temperature` (each (B, TOP_N)),
    after a step of a graph that has them, else None."""

    def __init__(self, session: ort.InferenceSession, cfg: ModelConfig, *, pad_id: int):
        self.session = session
        self.cfg = cfg
        self.pad_id = pad_id
        self.keep = window_keep(cfg)  # tokens a sliding row keeps
        self.windows: list[list[int]] = []
        self.hidden = None
        self.temperature = 1.0  # what the graph's top outputs are computed at (a caller sets it before stepping)
        self.top: tuple[np.ndarray, np.ndarray] | None = None


class Engine(DecodeLoop):
    """Runs the backbone for a batch of rows, each with its own token window.

    Invariants: every row's cache is right-aligned (left padding, mask 0 on the pad columns);
    row r holds len(self.windows[r]) real tokens at positions 0..n-1. When a row would need
    position max_seq_len, its window slides: its last `keep` tokens are re-prefilled at positions
    0.. (with any other row sliding at the same step: equal lengths, so no padding; this is what
    the same prompt does alone) and merged back into the batch, right-aligned.
    Inputs go to onnxruntime and presents come back without copies (numpy arrays over onnxruntime's
    buffers, fed straight back as the next past), so a decode step is one graph run. We measured
    IOBinding here: no faster than run() for this graph (bench/runtime_speed.py); it pays
    with the contrib graph, whose cache can be shared between past and present (shared_kv.SharedKVEngine).
    """

    def __init__(self, session: ort.InferenceSession, cfg: ModelConfig, *, pad_id: int):
        super().__init__(session, cfg, pad_id=pad_id)
        self.past: list[np.ndarray] = []  # 2 * n_layers arrays, each (B, H, T_total, hd)
        self.mask = np.zeros((0, 0), np.int64)  # (B, T_total)

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list) -> tuple[np.ndarray, list, np.ndarray]:
        outs = self.session.run(None, backbone_feeds(self.cfg, ids, mask, pos, past))
        # (B, V) logits and (B, dim) hidden of the last position; presents stay as returned
        return outs[0][:, -1], outs[1:-1], outs[-1][:, -1]

    def _prefill_rows(self, windows: list[list[int]]):
        """Left-padded prefill of fresh windows; returns (logits (B, V), presents, mask, hidden)."""
        B, T = len(windows), max(len(w) for w in windows)
        ids = np.full((B, T), self.pad_id, np.int64)
        mask = np.zeros((B, T), np.int64)
        for r, w in enumerate(windows):
            ids[r, T - len(w):] = w
            mask[r, T - len(w):] = 1
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)  # cumsum(mask) - 1: each row starts at 0
        logits, presents, hidden = self._run(ids, mask, pos, empty_past(self.cfg, B))
        return logits, presents, mask, hidden

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        """Start the batch from prompts (each at most max_seq_len tokens). Returns logits (B, V)."""
        self.windows = [list(p) for p in prompts]
        logits, self.past, self.mask, self.hidden = self._prefill_rows(self.windows)
        return logits

    def step(self, tokens: list[int]) -> np.ndarray:
        """Append one token per row and return the next logits (B, V)."""
        B = len(tokens)
        sliding = [r for r in range(B) if len(self.windows[r]) >= self.cfg.max_seq_len]
        for r, t in enumerate(tokens):
            self.windows[r].append(int(t))
        if not sliding:
            ids = np.asarray(tokens, np.int64)[:, None]
            pos = np.array([[len(w) - 1] for w in self.windows], np.int64)
            mask = np.concatenate([self.mask, np.ones((B, 1), np.int64)], axis=1)
            logits, self.past, self.hidden = self._run(ids, mask, pos, self.past)
            self.mask = mask
            return logits
        return self._slide(tokens, sliding)

    def _slide(self, tokens: list[int], sliding: list[int]) -> np.ndarray:
        B = len(tokens)
        past = self.past
        logits = np.zeros((B, self.cfg.vocab_size), np.float32)
        hidden = np.zeros((B, self.cfg.dim), np.float32)
        caches: dict[int, list[np.ndarray]] = {}
        # The sliding rows' new windows all have `keep` tokens, so they prefill together without padding.
        for r in sliding:
            self.windows[r] = self.windows[r][-self.keep:]
        lg, pres, _, hd = self._prefill_rows([self.windows[r] for r in sliding])
        for i, r in enumerate(sliding):
            logits[r], hidden[r] = lg[i], hd[i]
            caches[r] = [p[i] for p in pres]
        rest = [r for r in range(B) if r not in caches]
        if rest:  # the other rows take a normal decode step on their own sub-batch
            sub_past = [p[rest] for p in past]
            ids = np.asarray([tokens[r] for r in rest], np.int64)[:, None]
            pos = np.array([[len(self.windows[r]) - 1] for r in rest], np.int64)
            mask = np.concatenate([self.mask[rest], np.ones((len(rest), 1), np.int64)], axis=1)
            lg, pres, hd = self._run(ids, mask, pos, sub_past)
            for i, r in enumerate(rest):
                logits[r], hidden[r] = lg[i], hd[i]
                n = len(self.windows[r])
                caches[r] = [p[i, :, -n:] for p in pres]  # the row's real (right-aligned) part
        T = max(len(w) for w in self.windows)
        self.past = []
        for j in range(2 * self.cfg.n_layers):
            merged = np.zeros(self.cfg.kv_shape(B, T), np.float32)
            for r in range(B):
                n = len(self.windows[r])
                merged[r, :, T - n:] = caches[r][j]
            self.past.append(merged)
        self.mask = np.zeros((B, T), np.int64)
        for r, w in enumerate(self.windows):
            self.mask[r, T - len(w):] = 1
        self.hidden = hidden
        return logits
