"""ModelConfig, the architecture: the single definition that flows checkpoint -> export manifest -> runtime (stdlib only)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flashlm_core.artifacts import check_vocab_fits
from flashlm_core.errors import ConfigError


def from_dict_strict(cls, data: dict, *, what: str):
    """cls(**data) for a dataclass; unknown or missing keys are a ConfigError naming them."""
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
        check_vocab_fits(self.vocab_size, ConfigError)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def rope_inv_freq(self) -> tuple[float, ...]:
        """RoPE's frequencies theta^(-2i/head_dim), i < head_dim/2, in float64: the one table that torch, the ONNX
        graphs and the GGUF check all start from (computed by libm, not a vectorised pow, so the same on every CPU)."""
        return tuple(1.0 / self.rope_theta ** (2 * i / self.head_dim) for i in range(self.head_dim // 2))

    def kv_shape(self, batch, seq) -> tuple:
        """Shape of one layer's cached key or value: (batch, n_heads, seq, head_dim), BNSH; keys after RoPE.

        The one definition of the KV layout: batch and seq may be ints or symbolic ONNX dim names."""
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
        return from_dict_strict(cls, data, what="ModelConfig")


PRESETS: dict[str, ModelConfig] = {
    "v10-fsp": ModelConfig(),
    # A few-second model for unit tests; same code paths, tiny sizes.
    "tiny": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128),
}


def model_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
