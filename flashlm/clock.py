"""A --minutes budget run by the clock: warm-up by steps, then the learning rate follows the share of the budget
spent, and the run stops when the next step and the closing evaluation would no longer fit in it."""
from __future__ import annotations

import math
import statistics
import time

from flashlm.recipes import TrainConfig

RECENT_STEPS = 5  # the next step is expected to take the median of the latest few: it follows a CPU that changes speed


def now() -> float:
    """The run's clock in seconds: every duration the budget counts is read from it, so a test can drive it."""
    return time.perf_counter()


def by_time(tc: TrainConfig) -> bool:
    """Whether the schedule follows the clock: a --minutes run with neither --max-steps nor a fixed schedule length."""
    return tc.minutes is not None and tc.max_steps is None and tc.schedule_steps is None and tc.schedule_clock == "time"


def note_step(state: dict, seconds: float) -> None:
    """Keep the latest step times (not evaluations) in the run's state, which a checkpoint carries into a resume."""
    recent = state.setdefault("recent_steps", [])
    recent.append(seconds)
    del recent[:-RECENT_STEPS]


def next_step_seconds(state: dict) -> float:
    recent = state.get("recent_steps") or [0.0]
    return statistics.median(recent)


def reserve_seconds(state: dict) -> float:
    """What the run spends after its last step: the closing evaluation, then best/ and last/ written."""
    return state.get("eval_seconds", 0.0) + 2 * state.get("save_seconds", 0.0)


def end_seconds(tc: TrainConfig, state: dict) -> float:
    """When the last step should have ended: the budget less the closing reserve."""
    return max(0.0, tc.minutes * 60 - reserve_seconds(state))


def lr_by_time(step: int, elapsed: float, tc: TrainConfig, state: dict) -> float:
    """Linear warm-up over warmup_steps; then wsd holds lr until 1 - decay_frac of end_seconds and decays linearly to
    min_lr at it, or cosine runs from the end of warm-up to it."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    end = end_seconds(tc, state)
    start = min(state.get("warmup_end_s", 0.0), end)
    if tc.schedule == "wsd":
        start = max(start, (1 - tc.decay_frac) * end)
    progress = min(1.0, max(0.0, (elapsed - start) / max(end - start, 1e-9)))
    if tc.schedule == "wsd":
        return tc.lr + (tc.min_lr - tc.lr) * progress
    return tc.min_lr + (tc.lr - tc.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def out_of_budget(tc: TrainConfig, state: dict, *, next_evaluates: bool) -> bool:
    """True when the next step (with the periodic evaluation it would trigger) and the closing reserve would end past
    the budget."""
    need = next_step_seconds(state) + reserve_seconds(state)
    if next_evaluates:
        need += state.get("periodic_eval_seconds", 0.0)
    return state["elapsed"] + need > tc.minutes * 60
