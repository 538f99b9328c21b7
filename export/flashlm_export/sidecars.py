"""HF-style sidecar files so transformers.js and other runtimes can load an export without our code."""
from __future__ import annotations

from flashlm_core.config import ModelConfig
from flashlm_core.generation import GENERATION_DEFAULTS


def hf_config(cfg: ModelConfig, *, eot_id: int, opset: int, fsp_files: list[str], fsp_tau: int | None) -> dict:
    """config.json in Llama form (model_type llama, a registered decoder type) plus a flashlm block
    for what Llama lacks. Note: HF Llama rotates halves; FlashLM rotates interleaved pairs, which the
    ONNX graph already does, so ONNX consumers are unaffected."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": True,
        "flashlm": {
            "rope_interleaved": True,
            "ops": "plain",
            "opset": opset,
            "fsp": {"head": bool(fsp_files), "tau": fsp_tau, "files": fsp_files},
        },
    }


def tokenizer_config(*, eot: str, max_len: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "model_max_length": max_len,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def generation_config(*, eot_id: int) -> dict:
    return {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id, "do_sample": True,
            **{k: v for k, v in GENERATION_DEFAULTS.items() if k != "max_new_tokens"}, "max_new_tokens": GENERATION_DEFAULTS["max_new_tokens"]}
