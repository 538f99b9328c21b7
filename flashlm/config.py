"""ModelConfig (architecture, flows to export and runtime) and TrainConfig (training knobs); stdlib only."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from flashlm.errors import CheckpointError, ConfigError

# Version of every artifact we write (checkpoint config.json, export manifest.json, data meta.json).
# Readers accept this version and older ones (each future version adds one upgrade step from the
# previous one where it is read) and refuse newer ones.
FORMAT_VERSION = 1


def check_format_version(found: object, *, what: str) -> int:
    """Return a supported format version or raise naming both versions."""
    if not isinstance(found, int) or found < 1:
        raise CheckpointError(f"{what}: format_version {found!r} is not a positive integer; the file is corrupt")
    if found > FORMAT_VERSION:
        raise CheckpointError(
            f"{what}: format_version {found} is newer than this flashlm reads ({FORMAT_VERSION}); "
            "upgrade flashlm (pip install -U flashlm)"
        )
    return found


def read_versioned_json(folder, name: str, *, kind: str, make: str, fix: str) -> dict:
    """FOLDER/NAME of a versioned artifact folder (checkpoint, export), version-checked.

    Raises CheckpointError for a missing folder (hint: `make`), a missing or corrupt file
    (hint: `fix`) or a newer format_version.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such {kind} folder; {make}")
    path = folder / name
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {name}; this is not a flashlm {kind} folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt ({exc}); {fix}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: corrupt (not a JSON object); {fix}")
    check_format_version(raw.get("format_version"), what=str(path))
    return raw


def _from_dict(cls, data: dict, *, what: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown keys {unknown}; this file was written by another version or edited by hand")
    try:
        return cls(**data)
    except TypeError as exc:  # missing required keys
        raise ConfigError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: the single definition shared by training, export and runtime."""

    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 512
    max_seq_len: int = 256
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    fsp: bool = True  # the Linear(dim -> dim) FSP projection exists

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"ModelConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.vocab_size > 65536:
            raise ConfigError(f"vocab_size {self.vocab_size} does not fit the uint16 token files (max 65536)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def kv_shape(self, batch: int, seq: int) -> tuple[int, int, int, int]:
        """Shape of one layer's cached key or value: (batch, n_heads, seq, head_dim), BNSH."""
        return (batch, self.n_heads, seq, self.head_dim)

    @property
    def n_params(self) -> int:
        """Parameter count (the tied lm_head counted once)."""
        d = self.dim
        block = 4 * d * d + 3 * d * self.d_ff + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * block + d + head + (d * d if self.fsp else 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return _from_dict(cls, data, what="ModelConfig")


PRESETS: dict[str, ModelConfig] = {
    "v10-fsp": ModelConfig(),
    # A few-second model for unit tests; same code paths, tiny sizes.
    "tiny": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128),
}


MAX_THREADS = 256  # more is a typo: torch would spend a minute starting that many threads


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; never written into an export, so they never reach the runtime."""

    seq_len: int = 256
    micro_batch: int = 4
    grad_accum: int = 8
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dropout: float = 0.0  # on the embedding and each residual branch (cheap); the seed used 0.1
    attn_dropout: float = 0.0  # on the (B, heads, T, T) attention probabilities: ~40% of a bf16 step; the seed used 0.1
    fsp_alpha: float = 0.1  # 0 turns FSP off entirely (ablation)
    fsp_tau: int = 64  # bag-of-words window length
    fsp_rate: int = 16  # an FSP target every `rate` positions
    fsp_pos_weight: float = 50.0
    schedule: str = "cosine"  # "cosine": warmup, cosine to min_lr | "wsd": warmup, constant, linear decay over decay_frac
    decay_frac: float = 0.2  # wsd: the share of the schedule spent decaying
    schedule_steps: int | None = None  # the schedule's length when it differs from the stopping point (the seed's rule)
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved (0 = off)
    minutes: float | None = None  # wall-clock budget; the LR schedule is sized from measured step time
    max_steps: int | None = None
    eval_every: int = 100
    eval_batches: int = 16  # fixed validation subset for periodic eval
    log_every: int = 10
    sample_tokens: int = 80
    early_stop_patience: int | None = None  # evals without improvement before stopping
    seed: int = 1337
    bf16: bool | None = None  # bf16 autocast; None = only where the CPU has native bf16 (flashlm.precision)
    attention: str = "manual"  # "manual" (explicit masked softmax; fastest here in bf16 at T=256) | "sdpa"
    threads: int | None = None
    compile: bool = False
    recipe: str = "default"

    def __post_init__(self) -> None:
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
        if self.attention not in ("sdpa", "manual"):
            raise ConfigError(f"attention must be 'sdpa' or 'manual', got {self.attention!r}")
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
        return _from_dict(cls, data, what="TrainConfig")


# Named recipes: overrides on TrainConfig's defaults.
RECIPES: dict[str, dict] = {
    # The fast default: the seed's optimisation recipe with bf16 autocast and no dropout.
    "default": {},
    # The seed's script as published: fp32, manual masked-softmax attention, dropout 0.1 everywhere
    # (attention probabilities included), lr 5e-4 -> 1e-5 cosine over seed_schedule_steps(), which
    # ignores how fast the machine is: the run stops on the clock, usually long before the cosine ends.
    "seed": {"bf16": False, "attention": "manual", "dropout": 0.1, "attn_dropout": 0.1, "lr": 5e-4, "min_lr": 1e-5,
             "warmup_steps": 200, "micro_batch": 4, "grad_accum": 8, "schedule": "cosine", "ema": 0.0, "compile": False},
}


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


def model_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


__all__ = [
    "FORMAT_VERSION",
    "PRESETS",
    "RECIPES",
    "ModelConfig",
    "TrainConfig",
    "check_format_version",
    "model_preset",
    "recipe_config",
    "seed_schedule_steps",
]


def window_keep(cfg: ModelConfig) -> int:
    """Tokens kept when generation reaches the context limit: they are re-prefilled at positions 0..keep-1.

    The model never saw positions >= max_seq_len, so instead of shifting positions we drop the oldest
    quarter of the window and recompute the cache. Torch and runtime generators share this policy.
    """
    return max(1, cfg.max_seq_len * 3 // 4)
