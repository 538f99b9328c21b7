"""TrainConfig (every training knob) and the named recipes; never written into an export, so never in the runtime."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from flashlm_core.config import from_dict_strict
from flashlm_core.errors import ConfigError

MAX_THREADS = 256  # more is a typo: torch would spend a minute starting that many threads
PROJ_INITS = ("normal", "scaled", "zero")  # flashlm.model.init_projections
EVAL_ROWS = 4  # windows per eval batch (the default micro-batch; a run with another keeps the same 64-window subset)


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; never written into an export, so they never reach the runtime."""

    # Defaults = the best recipe of the search at the seed's 30-minute budget (docs/recipes.md, results/recipes/):
    # 4x the seed's peak lr, half its tokens per step (so twice the updates), cheap dropout on the embedding and
    # residual branches (round 2), and the lr held at its peak until the last 20 % of the run, then decayed
    # linearly (round 3). 16 sequences a step as 4 micro-batches of 4: one micro-batch of 16 (the same windows and
    # gradient, bench/micro_batch_grads.py) runs faster but trained worse at equal steps with both seeds tried
    # (results/recipes/r4-faststep-*), so it stays opt-in: --micro-batch 16 --grad-accum 1.
    seq_len: int = 256
    micro_batch: int = 4
    grad_accum: int = 4
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup_steps: int = 200
    weight_decay: float = 0.1
    weight_decay_on: str = "all"  # "all": AdamW decays every parameter | "matrices": only the 2-D weights (the tied embedding too), not the norms' gains
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # "adamw" over every parameter | "muon": Muon for the blocks' matrices, AdamW for the rest (flashlm.muon)
    muon_lr: float = 0.02  # muon: peak lr of the Muon matrices; the schedule scales it as it scales lr
    proj_init: str = "normal"  # a fresh run's residual output projections (wo, w_down): "normal" like every matrix | "scaled" (std / sqrt(2 n_layers)) | "zero" (flashlm.model.init_projections)
    dropout: float = 0.1  # on the embedding and each residual branch (cheap: activations of width dim)
    attn_dropout: float = 0.0  # on the (B, heads, T, T) attention probabilities: costly, a pass over every score; the seed used 0.1
    fsp_alpha: float = 0.1  # 0 turns FSP off entirely (ablation)
    fsp_tau: int = 64  # bag-of-words window length
    fsp_rate: int = 16  # an FSP target every `rate` positions
    fsp_pos_weight: float = 50.0
    schedule: str = "wsd"  # "wsd": warmup, constant, linear decay to min_lr over decay_frac | "cosine": warmup, cosine to min_lr
    decay_frac: float = 0.2  # wsd: the share of the schedule spent decaying
    schedule_steps: int | None = None  # the schedule's length when it differs from the stopping point (the seed's rule)
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved (0 = off)
    minutes: float | None = None  # wall-clock budget
    schedule_clock: str = "time"  # --minutes: "time" = the schedule follows the budget's elapsed share (flashlm.clock) | "steps" = a step count sized from the first steps
    max_steps: int | None = None
    sampling: str = "random"  # "random": every window start drawn uniformly, with replacement | "epoch": each pass a shuffled tiling of the split, at a fresh offset
    eval_every: int = 100
    eval_batches: int = 16  # periodic eval reads a fixed validation subset of eval_batches x EVAL_ROWS windows
    log_every: int = 10
    sample_tokens: int = 80
    early_stop_patience: int | None = None  # evals without improvement before stopping
    seed: int = 1337
    bf16: bool | None = None  # bf16 autocast; None = only where the CPU has native bf16 (flashlm.precision)
    attention: str = "auto"  # "manual" (explicit masked softmax) | "sdpa" (torch's CPU flash kernel) | "auto": pick_attention()
    threads: int | None = None
    compile: bool | None = None  # torch.compile the step; None = on for long runs where a C++ compiler exists (flashlm.compiled)
    init_from: str | None = None  # a checkpoint folder whose weights (and architecture, tokenizer) a fresh run starts from
    gemm: str = "torch"  # fp32 GEMMs through "torch" (its BLAS) or "numpy" (its OpenBLAS, flashlm.blas; slower in the whole step on an AVX2-only EPYC: docs/avx2-training.md) | "auto": a probed --minutes run keeps the faster
    short_run: bool | None = None  # SHORT_RUN's knobs; None = when a --minutes budget buys < SHORT_RUN_TOKENS on this machine (flashlm.probe)
    recipe: str = "default"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # NaN passes every comparison below as False: refuse it (and inf) first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        ranges = {"warmup_steps": (0, None), "weight_decay": (0, None), "beta1": (0, 1), "beta2": (0, 1), "grad_clip": (0, None),
                  "fsp_pos_weight": (0, None), "sample_tokens": (0, None), "seed": (0, None)}
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if value < lo or (hi is not None and value >= hi) or (name == "fsp_pos_weight" and value == 0):
                bound = f"in [{lo}, {hi})" if hi is not None else ("> 0" if name == "fsp_pos_weight" else f">= {lo}")
                raise ConfigError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ConfigError(f"--early-stop-patience must be >= 1, got {self.early_stop_patience}")
        positive = ("seq_len", "micro_batch", "grad_accum", "fsp_tau", "fsp_rate", "eval_every", "eval_batches", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1) (0 = off), got {self.ema}")
        if self.schedule_clock not in ("time", "steps"):
            raise ConfigError(f"--schedule-clock must be 'time' or 'steps', got {self.schedule_clock!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"--optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.weight_decay_on not in ("all", "matrices"):
            raise ConfigError(f"--weight-decay-on must be 'all' or 'matrices', got {self.weight_decay_on!r}")
        if self.weight_decay_on == "matrices" and self.optimizer == "muon":
            raise ConfigError("--weight-decay-on matrices is for --optimizer adamw (muon decays only the embedding and norms); drop one of them")
        if self.proj_init not in PROJ_INITS:
            raise ConfigError(f"--proj-init must be one of {', '.join(PROJ_INITS)}, got {self.proj_init!r}")
        if self.muon_lr <= 0:
            raise ConfigError(f"--muon-lr must be > 0, got {self.muon_lr}")
        if self.sampling not in ("random", "epoch"):
            raise ConfigError(f"--sampling must be 'random' or 'epoch', got {self.sampling!r}")
        if self.gemm not in ("auto", "torch", "numpy"):
            raise ConfigError(f"--gemm must be 'auto', 'torch' or 'numpy', got {self.gemm!r}")
        if self.schedule not in ("cosine", "wsd"):
            raise ConfigError(f"schedule must be 'cosine' or 'wsd', got {self.schedule!r}")
        if not 0.0 < self.decay_frac <= 1.0:
            raise ConfigError(f"decay_frac must be in (0, 1], got {self.decay_frac}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ConfigError(f"--schedule-steps must be >= 1, got {self.schedule_steps}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        if self.fsp_alpha < 0:
            raise ConfigError(f"fsp_alpha must be >= 0, got {self.fsp_alpha}")
        if self.attention not in ("auto", "sdpa", "manual"):
            raise ConfigError(f"attention must be 'auto', 'sdpa' or 'manual', got {self.attention!r}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--minutes must be > 0, got {self.minutes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"--threads must be between 1 and {MAX_THREADS}, got {self.threads}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch * self.grad_accum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return from_dict_strict(cls, data, what="TrainConfig")


# The short-run recipe: knobs still at their default values take these. With short_run None (the default), a --minutes
# run takes it when a probe of its step (flashlm.probe) says the budget buys fewer than SHORT_RUN_TOKENS tokens here:
# a few passes over a small train split, where dropout costs more than the overfitting it prevents. Without dropout
# the step's 16 windows run as one micro-batch of 16, the same windows and gradient as four of 4 and a faster step.
# Each pass over the split is one shuffled tiling of it (sampling "epoch"), so every window is seen as often as the next.
# The search at the length 30 minutes buy on an AVX2-only CPU is in results/recipes/avx2q-* (docs/avx2-training.md).
SHORT_RUN_TOKENS = 10_000_000
SHORT_RUN = {"dropout": 0.0, "micro_batch": 16, "grad_accum": 1, "sampling": "epoch"}
# Knobs SHORT_RUN changes together or not at all: both left at their defaults and no dropout mask drawn per micro-batch.
SHORT_RUN_BATCH = ("micro_batch", "grad_accum")
# A budget under TINY_RUN_TOKENS (about two passes over the 1.5M-token train split) also halves the windows a step for
# twice the steps, with the same warm-up in tokens and an evaluation every 250 steps: by steps at 2.8M tokens it
# trained better (results/recipes/avx2q-zen1-*), at a Zen 3's 4.8M and at 9M worse (avx2q-epoch-mb8-wu400-2330,
# avx2q-mb8-*): the threshold covers the length where it paid, with room for a faster machine.
TINY_RUN_TOKENS = 4_000_000
TINY_RUN = {"micro_batch": 8, "warmup_steps": 400, "eval_every": 250}
# Every knob the short-run recipe may change, the tiny tier's included.
SHORT_RUN_KNOBS = tuple(dict.fromkeys([*SHORT_RUN, *TINY_RUN]))


# One line of `flashlm-train --help` per TrainConfig field (the default is appended from the dataclass).
TRAIN_HELP = {
    "seq_len": "Tokens per training window (at most the model's context).",
    "micro_batch": "Windows per forward/backward pass.",
    "grad_accum": "Micro-batches summed into one optimizer step.",
    "lr": "Peak learning rate (AdamW's parameters).",
    "min_lr": "Learning rate at the end of the schedule.",
    "warmup_steps": "Optimizer steps of linear warm-up from 0 to lr.",
    "weight_decay": "AdamW weight decay.",
    "weight_decay_on": "Parameters AdamW decays: all, or matrices (the 2-D weights, the tied embedding too; not the norms' gains).",
    "beta1": "AdamW beta1.",
    "beta2": "AdamW beta2.",
    "grad_clip": "Clip the gradient's global norm to this (0 = off).",
    "optimizer": "adamw (every parameter) or muon (Muon for the blocks' matrices, AdamW for the embedding and norms).",
    "muon_lr": "With --optimizer muon: peak learning rate of the Muon matrices.",
    "proj_init": "A fresh run's residual output projections: normal (as every matrix), scaled (std / sqrt(2 x layers)) or zero.",
    "dropout": "Dropout on the embedding and each residual branch.",
    "attn_dropout": "Dropout on the attention probabilities.",
    "fsp_alpha": "Weight of the FSP loss (0 turns FSP off).",
    "fsp_tau": "FSP bag-of-words window: the next N tokens.",
    "fsp_rate": "An FSP target every N positions.",
    "fsp_pos_weight": "BCE weight of the FSP's positive (present) words.",
    "schedule": "Learning-rate schedule: wsd (warm-up, hold, linear decay) or cosine.",
    "decay_frac": "wsd: share of the schedule spent decaying.",
    "schedule_steps": "Length of the schedule in steps when it differs from where the run stops.",
    "ema": "Decay of an exponential moving average of the weights, evaluated and saved (0 = off).",
    "minutes": "Wall-clock budget, the closing evaluation included.",
    "schedule_clock": "With --minutes: time (the schedule follows the share of the budget spent) or steps (a step count sized from the first steps).",
    "max_steps": "Stop after this many optimizer steps (reproducible on any machine).",
    "sampling": "Training windows: random (uniform starts, with replacement) or epoch (each pass over the split a shuffled tiling at a fresh offset).",
    "eval_every": "Evaluate on the validation subset every N steps (and save best/).",
    "eval_batches": "Validation batches in each periodic evaluation.",
    "log_every": "Log a training line every N steps.",
    "sample_tokens": "Tokens of the sample printed at each evaluation.",
    "early_stop_patience": "Stop after N evaluations without improvement.",
    "seed": "Random seed (weights, data order, dropout).",
    "bf16": "bf16 autocast (auto: only where the CPU computes bf16 natively).",
    "attention": "Attention kernel: auto, sdpa (torch's flash kernel) or manual (explicit softmax).",
    "threads": "torch intra-op threads (default: the cores other work leaves free).",
    "compile": "torch.compile the step (auto: for long runs where a C++ compiler exists).",
    "gemm": "fp32 GEMMs through torch's BLAS, numpy's OpenBLAS, or auto (a --minutes run times its step with both and keeps the faster).",
    "short_run": ("The short-run recipe (" + ", ".join(f"{k} {v}" for k, v in SHORT_RUN.items()) +
                  f"; auto: when a --minutes budget buys under {SHORT_RUN_TOKENS / 1e6:g}M tokens on this machine, and under "
                  f"{TINY_RUN_TOKENS / 1e6:g}M also " + ", ".join(f"{k} {v}" for k, v in TINY_RUN.items()) + "; docs/avx2-training.md)."),
    "init_from": "Start from this checkpoint folder's weights ('default': the shipped model's); its tokenizer must be the data's.",
}

# Named recipes: overrides on TrainConfig's defaults.
RECIPES: dict[str, dict] = {
    # TrainConfig's defaults: precision from the CPU, lr 2e-3 held, then linear to 2e-5 over the last 20 % of
    # the budget, 16 x 256 tokens a step, dropout 0.1 on embedding and residual branches (none on attention probs).
    "default": {},
    # The default of the second round, which trained the previous bundled model: the same with a cosine from 2e-3
    # to 2e-5 over the budget.
    "round2": {"schedule": "cosine"},
    # The default of the first round.
    "round1": {"bf16": True, "lr": 5e-4, "min_lr": 1e-5, "warmup_steps": 200, "grad_accum": 8, "dropout": 0.0, "schedule": "cosine"},
    # The seed's script as published: fp32, manual masked-softmax attention, dropout 0.1 everywhere
    # (attention probabilities included), lr 5e-4 -> 1e-5 cosine over seed_schedule_steps(), which
    # ignores how fast the machine is: the run stops on the clock, usually long before the cosine ends; torch's BLAS, as the script.
    "seed": {"bf16": False, "attention": "manual", "dropout": 0.1, "attn_dropout": 0.1, "lr": 5e-4, "min_lr": 1e-5,
             "warmup_steps": 200, "micro_batch": 4, "grad_accum": 8, "schedule": "cosine", "ema": 0.0, "compile": False, "gemm": "torch"},
}


def short_run_config(tc: TrainConfig, *, tiny: bool = False) -> TrainConfig:
    """tc with SHORT_RUN's values for the knobs it leaves at TrainConfig's defaults, marked short_run=True; the batch
    shape (SHORT_RUN_BATCH) only as a pair, and only where no dropout is left, so a step's windows and gradient stay.
    tiny: TINY_RUN's smaller batch too, with its warm-up and evaluation steps, all only where that batch shape applies."""
    defaults = TrainConfig()

    def at_default(knobs: dict) -> dict:
        return {k: v for k, v in knobs.items() if k not in SHORT_RUN_BATCH and getattr(tc, k) == getattr(defaults, k)}

    changed = at_default(SHORT_RUN)
    no_dropout = changed.get("dropout", tc.dropout) == 0 and tc.attn_dropout == 0
    if no_dropout and all(getattr(tc, k) == getattr(defaults, k) for k in SHORT_RUN_BATCH):
        batch = {**SHORT_RUN, **TINY_RUN} if tiny else SHORT_RUN
        changed.update({k: batch[k] for k in SHORT_RUN_BATCH})
        if tiny:
            changed.update(at_default(TINY_RUN))
    return dataclasses.replace(tc, short_run=True, **changed)


def pick_attention(attention: str, *, bf16: bool) -> str:
    """'auto' becomes the faster kernel for the precision at T = 256, head_dim 32 (fwd + bwd of one layer's
    attention, bench/train_speed.py): in bf16 the explicit matmul-softmax beats the flash kernel, whose backward is
    slow there; in fp32 the flash kernel is the faster."""
    if attention != "auto":
        return attention
    return "manual" if bf16 else "sdpa"


def seed_schedule_steps(minutes: float | None, tokens_per_step: int) -> int:
    """The seed script's cosine length: max(2000, minutes*60*2000/tokens_per_step), whatever the step rate."""
    return max(2000, int((minutes or 0) * 60 * 2000 / tokens_per_step))


def recipe_config(name: str, **overrides) -> TrainConfig:
    """TrainConfig for a named recipe, with explicit overrides (None means 'keep the recipe value')."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    values = {**RECIPES[name], "recipe": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    tc = TrainConfig(**values)
    if name == "seed" and tc.schedule_steps is None:
        tc = dataclasses.replace(tc, schedule_steps=seed_schedule_steps(tc.minutes, tc.tokens_per_step))
    return tc
