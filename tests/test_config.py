import json

import pytest

from flashlm.recipes import TrainConfig, recipe_config
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError, ConfigError
from flashlm_core.versioned import FORMAT_VERSION, check_format_version


def test_v10_param_count_matches_seed():
    import torch  # noqa: F401  (the count is checked on the real module too)

    from flashlm.model import FlashLMModel

    cfg = ModelConfig()
    assert cfg.n_params == 3_737_856
    assert sum(p.numel() for p in FlashLMModel(cfg).parameters()) == 3_737_856
    assert cfg.head_dim == 32 and cfg.kv_shape(2, 5) == (2, 8, 5, 32)


def test_roundtrip_and_unknown_keys():
    cfg = ModelConfig(vocab_size=512, dim=64)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    tc = TrainConfig(max_steps=3)
    assert TrainConfig.from_dict(tc.to_dict()) == tc
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_kv_heads": 2})


def test_invalid_values_are_typed_errors():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(dim=100, n_heads=8)
    with pytest.raises(ConfigError, match="uint16"):
        ModelConfig(vocab_size=70000)
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe_config("turbo")


def test_newer_format_version_is_refused_with_both_versions():
    assert check_format_version(FORMAT_VERSION, what="x") == FORMAT_VERSION
    with pytest.raises(CheckpointError, match=f"{FORMAT_VERSION + 1} is newer.*\\({FORMAT_VERSION}\\)"):
        check_format_version(FORMAT_VERSION + 1, what="x")


def test_seed_recipe_is_the_seed():
    tc = recipe_config("seed")
    assert (tc.bf16, tc.attention, tc.dropout, tc.micro_batch, tc.grad_accum) == (False, "manual", 0.1, 4, 8)
    assert (tc.lr, tc.min_lr, tc.warmup_steps, tc.weight_decay, tc.grad_clip) == (5e-4, 1e-5, 200, 0.1, 1.0)
    assert (tc.fsp_alpha, tc.fsp_tau, tc.fsp_rate, tc.fsp_pos_weight) == (0.1, 64, 16, 50.0)
