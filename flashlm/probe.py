"""Before a fresh --minutes run: a few real optimizer steps on a throwaway model measure the tokens a second this
machine trains, with each fp32 GEMM path (flashlm.blas) where there is a choice, and so whether the budget is short
(recipes.SHORT_RUN_TOKENS, TINY_RUN_TOKENS)."""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch

from flashlm import blas
from flashlm.fsp import Objective
from flashlm.model import FlashLMModel
from flashlm.recipes import SHORT_RUN_KNOBS, SHORT_RUN_TOKENS, TINY_RUN_TOKENS, TrainConfig, short_run_config
from flashlm_core.config import ModelConfig

PROBE_STEPS = 2  # timed per GEMM path after one warm-up step each: a small share of a 30-minute budget
GEMM_MARGIN = 1.03  # numpy's BLAS is kept only when its step is this much faster (two steps' timing noise)


def tokens_per_second(model_cfg: ModelConfig, tc: TrainConfig, *, gemms: tuple[str, ...] = ("torch",),
                      steps: int = PROBE_STEPS) -> dict[str, float]:
    """Median tokens/s of tc's optimizer step (kernels as resolved for the run), eager, on random token ids, for each
    GEMM path, their steps interleaved so that a change in the machine's speed hits them alike."""
    from flashlm.train import batch_starts, make_optimizer, optimizer_step  # the run's own step

    state = torch.get_rng_state()
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, 64 * tc.seq_len, dtype=np.int64)
    runs = {}
    for gemm in gemms:
        model = FlashLMModel(model_cfg, dropout=tc.dropout, attn_dropout=tc.attn_dropout, attention=tc.attention).train()
        runs[gemm] = (model, make_optimizer(model, tc), Objective(model, tc))
    times = {gemm: [] for gemm in gemms}
    for step in range(steps + 1):
        starts = batch_starts(step, seed=0, rank=0, n_tokens=len(tokens), tc=tc)
        for gemm, (model, optimizer, objective) in runs.items():
            with blas.using(gemm == "numpy"):
                t0 = time.perf_counter()
                optimizer_step(objective, model, optimizer, tokens, starts, tc, lr=tc.lr)
                times[gemm].append(time.perf_counter() - t0)
    torch.set_rng_state(state)  # the run draws its weights and dropout masks as it would without the probe
    return {gemm: tc.tokens_per_step / statistics.median(t[1:]) for gemm, t in times.items()}


def probed(tc: TrainConfig) -> bool:
    """A --minutes run (not --max-steps) with something left to decide: the GEMM path in fp32, or the short-run recipe."""
    if tc.minutes is None or tc.max_steps is not None:
        return False
    return (tc.gemm == "auto" and tc.bf16 is False) or (tc.short_run is None and tc.recipe == "default")


def adapt(model_cfg: ModelConfig, tc: TrainConfig) -> tuple[TrainConfig, list[str], float]:
    """(the config to train with, the lines saying what was decided, seconds the probe took). tc.bf16 as resolved.
    --short-run applies SHORT_RUN at once; a run that is not probed() keeps tc, with gemm auto as torch."""
    if tc.short_run is True:
        tc = short_run_config(tc)
    if not probed(tc):
        return dataclasses.replace(tc, gemm="torch" if tc.gemm == "auto" else tc.gemm), [], 0.0
    t0 = time.perf_counter()
    choose_gemm = tc.gemm == "auto" and tc.bf16 is False
    decide_short = tc.short_run is None and tc.recipe == "default"
    gemms = ("torch", "numpy") if choose_gemm else ("torch" if tc.gemm == "auto" else tc.gemm,)
    # timed as the run would most likely train: the short-run recipe's batch while that is still to decide
    rates = tokens_per_second(model_cfg, short_run_config(tc) if decide_short else tc, gemms=gemms)
    lines = []
    if choose_gemm:
        gemm = "numpy" if rates["numpy"] > GEMM_MARGIN * rates["torch"] else "torch"
        lines.append(f"gemm: {gemm} (the fp32 step ran {rates['numpy'] / rates['torch']:.2f}x as fast through {blas.describe()} "
                     f"as through torch's BLAS here; --gemm torch|numpy forces one)")
    else:
        gemm = gemms[0]
    tc = dataclasses.replace(tc, gemm=gemm)
    rate = rates[gemm]
    if decide_short:
        budget_tokens = rate * tc.minutes * 60
        said = (f"this machine trains {rate:,.0f} tokens/s, so {tc.minutes:g} minutes buy about {budget_tokens / 1e6:.1f}M tokens")
        if budget_tokens >= SHORT_RUN_TOKENS:
            tc = dataclasses.replace(tc, short_run=False)
            lines.append(f"short run: off ({said}, at least {SHORT_RUN_TOKENS / 1e6:g}M)")
        else:
            tiny = budget_tokens < TINY_RUN_TOKENS
            short = short_run_config(tc, tiny=tiny)
            changed = ", ".join(f"{k} {getattr(short, k)}" for k in SHORT_RUN_KNOBS if getattr(short, k) != getattr(tc, k))
            under = f"under {(TINY_RUN_TOKENS if tiny else SHORT_RUN_TOKENS) / 1e6:g}M"
            lines.append(f"short run: on ({said}, {under}): {changed or 'nothing to change'} "
                         "(--no-short-run keeps the default recipe)")
            tc = short
    return tc, lines, time.perf_counter() - t0
