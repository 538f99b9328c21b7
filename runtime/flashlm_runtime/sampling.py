"""Next-token sampling in numpy: temperature, top-k, min-p, nucleus (the seed's semantics), repetition/presence/frequency penalties."""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from flashlm_core.errors import CheckpointError, ConfigError
from flashlm_core.generation import GENERATION_DEFAULTS, GREEDY_BELOW

NUCLEUS_GAPS = (4.0, 8.0, 16.0, np.inf)  # logit distances from the best token tried for the nucleus, widest last
PY_SORT_MAX = 64  # candidate sets up to this size are sorted in plain Python (numpy's per-call cost dominates)
MAX_TEMPERATURE = 100.0  # flatter than this is uniform to float32 anyway; 1e39 overflowed numpy's scaling
MAX_PENALTY = 100.0  # a repetition penalty outside [1/100, 100] only overflows the logits


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 is greedy; top_k 0, min_p 0 and top_p 1 disable those filters.

    The filters run in this order on the logits divided by temperature: top-k, then min-p (drop every token whose
    probability is below min_p times the likeliest one's, as llama.cpp and HF transformers do), then the nucleus over
    the renormalised survivors. Penalties change the logits first: repetition_penalty (CTRL/HF: every token of the
    prompt and the text so far), then presence_penalty and frequency_penalty (OpenAI: logit - count * frequency -
    (count > 0) * presence, counting the tokens generated so far).
    """

    temperature: float = GENERATION_DEFAULTS["temperature"]
    top_k: int = 0
    top_p: float = GENERATION_DEFAULTS["top_p"]
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        for name in ("temperature", "top_p", "repetition_penalty", "min_p", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if not (0 <= self.min_p <= 1):
            raise ConfigError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not (-2 <= getattr(self, name) <= 2):
                raise ConfigError(f"{name} must be in [-2, 2] (0 = off), got {getattr(self, name)}")
        if not (0 <= self.temperature <= MAX_TEMPERATURE):
            raise ConfigError(f"temperature must be from 0 (greedy) to {MAX_TEMPERATURE:g}, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (1 / MAX_PENALTY <= self.repetition_penalty <= MAX_PENALTY):
            raise ConfigError(f"repetition_penalty must be from {1 / MAX_PENALTY:g} to {MAX_PENALTY:g} (1 = off), got {self.repetition_penalty}")
        if not math.isfinite(self.temperature):
            raise ConfigError(f"temperature must be finite, got {self.temperature}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def penalized(self) -> bool:
        """True when penalties change the logits (then a graph's top outputs, of the raw logits, cannot be used)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def apply_penalties(logits: np.ndarray, params: SamplingParams, *, seen: np.ndarray, generated: np.ndarray,
                    counts: np.ndarray) -> np.ndarray:
    """One row's logits (V,) with params' penalties, on a copy: repetition over `seen` (prompt and text so far), then
    presence and frequency over the distinct `generated` ids with their `counts`."""
    out = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if generated.size and (params.presence_penalty or params.frequency_penalty):
        out = out.copy() if out is logits else out
        out[generated] -= counts * np.float32(params.frequency_penalty) + np.float32(params.presence_penalty)
    return out


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL/HF rule on a copy: divide positive logits of seen tokens by penalty, multiply negative ones."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def top_temperature(params: SamplingParams) -> float:
    """The temperature a graph's top outputs must be computed at for sample_rows: params' own; 1 when greedy, where
    top_ids[:, 0] is then the argmax (0 would divide 0 by 0)."""
    return params.temperature if params.temperature >= GREEDY_BELOW else 1.0


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick one id from logits (V,): sample_rows for one row."""
    return sample_rows(logits[None], params, [rng])[0]


def sample_rows(logits: np.ndarray, params: SamplingParams, rngs: list[np.random.Generator],
                top: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
    """Pick one id per row of logits (B, V), row r with rngs[r]. Matches flashlm.generate.filter_logits: top-k
    first, then the nucleus over the renormalised survivors, keeping every token whose preceding cumulative
    probability is <= top_p (so the crossing token, and always the top token, stay).

    top: the graph's (probabilities, ids) of each row's likeliest tokens, each (B, N), descending, at
    params.temperature (at 1 for greedy: the first id is then the argmax); contrib graphs compute them in the
    step. A row whose nucleus (or top-k) lies within its N is drawn from them alone, without a pass over its V
    logits; any other row takes the numpy path below, which makes the same choice from the same single rng
    draw (up to float rounding at a boundary).
    Hot path (once per step): every pass runs once over all rows (a Python loop per row cost more than the
    sampling itself at batch 8), and only the tokens near each row's best are sorted. A single row takes 1-D arrays and Python
    floats (fewer numpy calls, the same float32 and float64 operations). A row's pick depends on its own logits
    and rng only, so a prompt samples the same text alone as in a batch.
    """
    if top is not None and params.temperature < GREEDY_BELOW:  # top computed at temperature 1: top_ids[:, 0] is the argmax
        _check_finite(top[0][:, 0].tolist())
        return top[1][:, 0].tolist()
    if top is not None:
        picks = [_top_pick(probs, ids, params, rng) for probs, ids, rng in zip(top[0].tolist(), top[1], rngs)]
        missed = [r for r, pick in enumerate(picks) if pick is None]
        if missed:
            for r, pick in zip(missed, sample_rows(logits[missed], params, [rngs[r] for r in missed])):
                picks[r] = pick
        return picks
    top = logits.max(-1, keepdims=True)  # (B, 1)
    _check_finite(top.ravel().tolist())  # (in Python: a numpy call costs more, the step evicted its caches)
    if params.temperature < GREEDY_BELOW:  # the limit of sampling as temperature -> 0, without overflow
        return logits.argmax(-1).tolist()
    if len(rngs) == 1:
        x, e, cand = _scaled(logits[0], top[0], params)
        limit = params.top_p * float(e.sum(dtype=np.float64))
        i = _draw(e, rngs[0]) if params.top_p >= 1.0 else _row_pick(x, e, limit, rngs[0], NUCLEUS_GAPS)
        return [i if cand is None else int(cand[i])]
    x, e, cand = _scaled(logits, top, params)
    if params.top_p >= 1.0:
        picks = [_draw(e[r], rng) for r, rng in enumerate(rngs)]
    else:
        picks = _nucleus_picks(x, e, params.top_p * e.sum(-1, dtype=np.float64), rngs)
    return picks if cand is None else [int(cand[r, i]) for r, i in enumerate(picks)]


def _check_finite(values: list[float]) -> None:
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise CheckpointError(f"the model produced {bad[0]} logits: the export is broken; re-export a good checkpoint")


def _top_pick(probs: list[float], ids: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int | None:
    """A draw from one row's N likeliest tokens (probs descending, ids (N,)), or None when the nucleus may reach
    past them (then nothing is drawn from rng). The same steps as _row_pick over the same ordering."""
    _check_finite(probs[:1])  # NaN or inf logits make every probability NaN
    n = len(probs)
    if params.top_p >= 1.0 or params.top_k > n:  # no nucleus (the numpy path draws in its own order), or a wider top-k
        return None
    n = params.top_k or n
    if params.min_p > 0:
        floor = params.min_p * probs[0]
        kept = bisect_right([-p for p in probs[:n]], -floor)  # probs descending: those >= floor
        if kept == n and not params.top_k:  # the min-p survivors may reach past these N
            return None
        n = kept
    cum = list(accumulate(probs[:n]))  # float64 sums
    if params.top_k or params.min_p > 0:
        limit = params.top_p * cum[-1]  # top-k and min-p renormalise their survivors, all of them here
    else:
        limit = params.top_p
        if cum[-1] <= limit:  # these N hold too little mass: the nucleus reaches further
            return None
    return int(ids[_nucleus_draw(cum, limit, rng)])


def _nucleus_draw(cum: list[float], limit: float, rng: np.random.Generator) -> int:
    """A position in a descending order whose running sums are cum (cum[-1] > limit), drawn with one rng.random()
    from the nucleus: the first n_keep positions, every one whose preceding sum is <= limit."""
    n_keep = 1 + bisect_right(cum, limit, 0, len(cum) - 1)
    u = rng.random() * cum[n_keep - 1]  # the draw's cdf is cum's first n_keep sums
    return min(bisect_right(cum, u, 0, n_keep), n_keep - 1)


def _scaled(logits: np.ndarray, top: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, e, cand) for logits (V,) or (B, V) and their max over the last axis (kept as an axis): x = (logits - top)
    / temperature, after top-k shifted again so each row's max is 0 (cand: the top-k ids x holds, else None);
    e = exp(x), the unnormalised probabilities."""
    # shift before scaling: at temperature 1e-7 the raw logits * 1e7 overflow float32
    x = logits.astype(np.float32, copy=False) - top
    x *= np.float32(1.0 / params.temperature)
    cand = None
    V = x.shape[-1]
    if params.top_k and params.top_k < V:
        cand = x.argpartition(V - params.top_k, axis=-1)[..., V - params.top_k:]
        x = np.take_along_axis(x, cand, -1)
        x -= x.max(-1, keepdims=True)
    e = np.exp(x)
    if params.min_p > 0:  # each row's max is 0 here, so e is each probability over the likeliest one's
        low = e < np.float32(params.min_p)
        x[low], e[low] = -np.inf, 0.0
    return x, e, cand


def _nucleus_picks(x: np.ndarray, e: np.ndarray, limits: np.ndarray, rngs: list) -> list[int]:
    """One draw per row of a batch from its nucleus: the fewest most likely tokens whose mass passes limits[r].

    Only tokens within NUCLEUS_GAPS[0] of a row's best are sorted, all rows at once in a (B, M) table padded
    with zeros; a row whose candidates hold too little mass widens its gap alone in _row_pick (every token left
    out is less likely than every token sorted, so the nucleus is exact), which makes the same choice with the
    same single rng draw as a row sampled alone. x (B, V) shifted so each row's max is 0; e = exp(x).
    """
    B = len(rngs)
    rows, cols = np.divmod(np.flatnonzero(x > -NUCLEUS_GAPS[0]), x.shape[1])  # row-major, and faster than a 2-D nonzero
    starts = np.searchsorted(rows, np.arange(B + 1))
    width = int(np.diff(starts).max())
    ids = np.zeros((B, width), np.int64)
    vals = np.zeros((B, width), e.dtype)
    slot = np.arange(rows.size) - starts[rows]
    ids[rows, slot], vals[rows, slot] = cols, e[rows, cols]
    order = (-vals).argsort(axis=-1, kind="stable")  # (B, M), padding last, ties in id order
    ids, vals = np.take_along_axis(ids, order, -1), np.take_along_axis(vals, order, -1)
    cum = vals.cumsum(-1, dtype=np.float64)
    n_keep = 1 + (cum[:, :-1] <= limits[:, None]).sum(-1)  # searchsorted(cum[:-1], limit, "right") per row
    vals[np.arange(width)[None, :] >= n_keep[:, None]] = 0
    cdf = vals.cumsum(-1, dtype=np.float64)
    wide = cum[:, -1] <= limits  # too little mass near the best
    u = np.array([0.0 if w else rng.random() for w, rng in zip(wide, rngs)]) * cdf[:, -1]
    picks = ids[np.arange(B), np.minimum((cdf <= u[:, None]).sum(-1), n_keep - 1)].tolist()
    for r in np.flatnonzero(wide):
        picks[r] = _row_pick(x[r], e[r], float(limits[r]), rngs[r], NUCLEUS_GAPS[1:])
    return picks


def _row_pick(x: np.ndarray, e: np.ndarray, limit: float, rng: np.random.Generator, gaps: tuple) -> int:
    """One row's nucleus draw, sorting the tokens within the first of `gaps` that holds enough mass.

    A few candidates (the usual case: a median of 3 within 4 nats at temperature 0.8) are sorted in plain Python,
    which gives numpy's stable sort, float64 cumulative sums and searchsorted bit for bit at a tenth of the cost.
    """
    for gap in gaps:
        sel = np.flatnonzero(x > -gap) if gap != np.inf else np.arange(x.size)
        if sel.size <= PY_SORT_MAX:
            vals = e[sel].tolist()
            order = sorted(range(len(vals)), key=vals.__getitem__, reverse=True)  # stable, like argsort(-es, "stable")
            cum = list(accumulate(vals[i] for i in order))  # sequential float64 sums, like cumsum
            if cum[-1] > limit:
                return int(sel[order[_nucleus_draw(cum, limit, rng)]])
            continue
        es = e[sel]
        order = (-es).argsort(kind="stable")
        cum = es[order].cumsum(dtype=np.float64)
        if cum[-1] > limit:
            break
    keep = order[: 1 + int(np.searchsorted(cum[:-1], limit, side="right"))]
    return int(sel[keep[_draw(es[keep], rng)]])


def _draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """An index into p (unnormalised probabilities), drawn with one rng.random()."""
    cdf = p.cumsum(dtype=np.float64)
    return min(int(cdf.searchsorted(rng.random() * cdf[-1], side="right")), cdf.size - 1)
