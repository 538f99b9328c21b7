"""Sidecar files so transformers.js, onnxruntime-genai and optimum load an export without our code."""
from __future__ import annotations

from flashlm_core import artifacts as A
from flashlm_core.config import ModelConfig
from flashlm_core.generation import GENERATION_DEFAULTS


def hf_config(cfg: ModelConfig, *, eot_id: int, opset: int, fsp_files: list[str], fsp_tau: int | None, int8: bool,
              ops: str) -> dict:
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
        # transformers.js picks onnx/model.onnx (fp32) or onnx/model_quantized.onnx (q8) by dtype; without this
        # key it asks for fp32, which an int8-only bundle does not have. Default = what flashlm-run runs.
        "transformers.js_config": {"dtype": "q8" if int8 else "fp32"},
        "flashlm": {
            "rope_interleaved": True,
            "ops": ops,
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
        # a batch must be padded on the left (position_ids from the mask); right padding makes the shorter
        # row continue after its pad tokens
        "padding_side": "left",
        # the graph has no token_type_ids input: optimum's generate() refuses kwargs the model does not take
        "model_input_names": ["input_ids", "attention_mask"],
    }


def generation_config(*, eot_id: int, max_len: int) -> dict:
    """max_length stops HF-style clients at the trained context: they do not slide the window as flashlm-run does,
    and past it they would feed positions the model never saw."""
    return {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id, "do_sample": True,
            **{k: v for k, v in GENERATION_DEFAULTS.items() if k != "max_new_tokens"}, "max_new_tokens": GENERATION_DEFAULTS["max_new_tokens"],
            "max_length": max_len}


def genai_config(cfg: ModelConfig, *, eot_id: int, decoder_file: str, ops: str) -> dict:
    """genai_config.json for onnxruntime-genai (type llama; our IO names). A plain graph concatenates past and
    new keys (present grows by one a step), so past_present_share_buffer is false; a contrib graph's
    GroupQueryAttention writes into a (B, H, max_length, hd) buffer shared by past and present, as genai's own
    model builder does, and takes no position_ids."""
    inputs = {"input_ids": A.INPUT_IDS, "attention_mask": A.ATTENTION_MASK, "position_ids": A.POSITION_IDS,
              "past_key_names": A.past_key("%d"), "past_value_names": A.past_value("%d")}
    if ops == A.CONTRIB:
        del inputs["position_ids"]
    return {
        "model": {
            "type": "llama",
            "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.max_seq_len,
            "decoder": {
                "filename": decoder_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": cfg.head_dim, "hidden_size": cfg.dim,
                "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers,
                # the graph's IO names, with genai's %d for the layer index
                "inputs": inputs,
                "outputs": {"logits": A.LOGITS, "present_key_names": A.present_key("%d"), "present_value_names": A.present_value("%d")},
            },
        },
        "search": {
            "max_length": cfg.max_seq_len, "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
            "do_sample": True, "temperature": GENERATION_DEFAULTS["temperature"], "top_p": GENERATION_DEFAULTS["top_p"],
            "top_k": GENERATION_DEFAULTS["top_k"], "repetition_penalty": GENERATION_DEFAULTS["repetition_penalty"],
            "past_present_share_buffer": ops == A.CONTRIB, "early_stopping": True, "length_penalty": 1.0,
            "diversity_penalty": 0.0, "no_repeat_ngram_size": 0,
        },
    }
