"""Greedy agreement between two int8 implementations, judged by a rule that no CPU's rounding can break.

Two int8 kernels (onnxruntime's native MLAS on AVX2, AVX-512 or AMX; onnxruntime-web's WASM; another onnxruntime
version inside a client) round differently, so their logits differ a little and a greedy pick at a near-tie may go
either way. Comparing their token ids one for one passes or fails by the luck of the CPU. Instead, the client's own
ids are fed to the runtime's decode loop (teacher forcing: prefill, then one step per token, exactly the calls a
greedy run makes, so the dynamic quantization scales are those of a real run) and the client's pick is required to
be the runtime's argmax wherever the runtime's top-2 logit margin is at least CLEAR_MARGIN. Two kernels that each
move a logit by less than CLEAR_MARGIN / 2 cannot swap such a pair, on any CPU. A position with a smaller margin is a
near-tie and is not judged; a client that follows its own pick there is still judged at every clear position after
it, on its own path, so nothing cascades.
"""
from __future__ import annotations

import numpy as np

# Plain-ops and contrib-ops int8 graphs (one attention by Concat + MatMul, the other by GroupQueryAttention) moved a
# logit by at most ~0.22 against each other along 800 greedy tokens of the shipped model on one CPU: two roundings of
# the same int8 graph differ less. 1.0 nats is more than twice that on both sides of a pair.
CLEAR_MARGIN = 1.0
# At least this share of the judged positions must be clear, or the test has checked nothing: the tiny test model
# of tests/conftest.py (300 steps, 512 tokens) is unsure of itself, about a fifth of its greedy picks are clear; the
# shipped model's are 60-70 %.
MIN_CLEAR = 0.15


def forced_logits(lm, prompts: list[list[int]], fed: list[list[int]]) -> np.ndarray:
    """Logits (B, S, V) of the runtime's decode loop fed `fed` (rows padded with <|endoftext|>): [s] predicts fed[r][s]."""
    steps = max(len(f) for f in fed)
    rows = [list(f) + [lm.eot_id] * (steps - len(f)) for f in fed]
    engine = lm._engine()
    out = [engine.prefill(prompts).copy()]
    for s in range(steps - 1):
        out.append(engine.step([row[s] for row in rows]).copy())
    return np.stack(out, axis=1)


def assert_greedy_agrees(lm, prompts: list[list[int]], got: list[list[int]], *, ended: list[bool] | None = None,
                         batch: bool = False, what: str = "client") -> float:
    """Every clear greedy pick of `got` (one row per prompt) equals the runtime's; returns the share of clear positions.

    batch: the client ran the rows as one batch (teacher-forced so too: int8 scales are per batch), else each alone.
    ended[r]: the client chose <|endoftext|> right after got[r] (and so stopped); that pick is judged too.
    """
    ended = ended or [False] * len(got)
    fed = [list(g) + ([lm.eot_id] if e else []) for g, e in zip(got, ended)]
    if batch:
        logits = list(forced_logits(lm, prompts, fed))
    else:
        logits = [forced_logits(lm, [p], [f])[0] for p, f in zip(prompts, fed)]
    judged = clear = 0
    for r, row in enumerate(fed):
        top2 = np.sort(logits[r], axis=-1)[:, -2:]
        margin, best = top2[:, 1] - top2[:, 0], logits[r].argmax(-1)
        for s, token in enumerate(row):
            judged += 1
            if margin[s] >= CLEAR_MARGIN:
                clear += 1
                assert token == best[s], (f"{what} picked {token} where the runtime's argmax {best[s]} leads by "
                                          f"{margin[s]:.2f} nats (row {r}, token {s}, prompt {prompts[r][:8]}...)")
    assert judged and clear / judged >= MIN_CLEAR, f"only {clear} of {judged} positions were clear: nothing was checked"
    return clear / judged
