"""Before a --minutes run of the default recipe: a few real optimizer steps on a throwaway model measure the tokens a
second this machine trains, and so whether the budget is short (recipes.SHORT_RUN_TOKENS)."""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import torch

from flashlm.fsp import Objective
from flashlm.model import FlashLMModel
from flashlm.recipes import SHORT_RUN, SHORT_RUN_TOKENS, TrainConfig, short_run_config
from flashlm_core.config import ModelConfig

PROBE_STEPS = 2  # timed after one warm-up step: about 1 % of a 10-minute budget on a 2-core CPU without native bf16


def tokens_per_second(model_cfg: ModelConfig, tc: TrainConfig) -> float:
    """Median tokens/s of tc's optimizer step (kernels as resolved for the run), eager, on random token ids."""
    from flashlm.train import batch_starts, make_optimizer, optimizer_step  # the run's own step

    state = torch.get_rng_state()
    model = FlashLMModel(model_cfg, dropout=tc.dropout, attn_dropout=tc.attn_dropout, attention=tc.attention).train()
    optimizer = make_optimizer(model, tc)
    objective = Objective(model, tc)
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, 64 * tc.seq_len, dtype=np.int64)
    times = []
    for step in range(PROBE_STEPS + 1):
        starts = batch_starts(step, seed=0, rank=0, n_tokens=len(tokens), tc=tc)
        t0 = time.perf_counter()
        optimizer_step(objective, model, optimizer, tokens, starts, tc, lr=tc.lr)
        times.append(time.perf_counter() - t0)
    torch.set_rng_state(state)  # the run draws its weights and dropout masks as it would without the probe
    return tc.tokens_per_step / statistics.median(times[1:])


def adapt(model_cfg: ModelConfig, tc: TrainConfig) -> tuple[TrainConfig, str | None, float]:
    """(the config to train with, the line saying what was decided or None, seconds the probe took). Only a fresh
    --minutes run of the default recipe with short_run left to auto is probed; short_run True applies SHORT_RUN at once."""
    if tc.short_run is True:
        return short_run_config(tc), "short run: on (--short-run)", 0.0
    if tc.short_run is not None or tc.recipe != "default" or tc.minutes is None or tc.max_steps is not None:
        return tc, None, 0.0
    t0 = time.perf_counter()
    rate = tokens_per_second(model_cfg, tc)
    seconds = time.perf_counter() - t0
    budget_tokens = rate * tc.minutes * 60
    if budget_tokens >= SHORT_RUN_TOKENS:
        return dataclasses.replace(tc, short_run=False), (
            f"short run: off (this machine trains {rate:,.0f} tokens/s, so {tc.minutes:g} minutes buy about "
            f"{budget_tokens / 1e6:.1f}M tokens, at least {SHORT_RUN_TOKENS / 1e6:g}M)"), seconds
    short = short_run_config(tc)
    changed = ", ".join(f"{k} {getattr(short, k)}" for k in SHORT_RUN if getattr(short, k) != getattr(tc, k))
    return short, (f"short run: on (this machine trains {rate:,.0f} tokens/s, so {tc.minutes:g} minutes buy about "
                   f"{budget_tokens / 1e6:.1f}M tokens, under {SHORT_RUN_TOKENS / 1e6:g}M): {changed or 'nothing to change'} "
                   "(--no-short-run keeps the default recipe)"), seconds
