"""Names shared by exporter and runtime: export folder layout, manifest, ONNX IO names (stdlib only)."""
from __future__ import annotations

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
ONNX_DIR = "onnx"

# Graph files, keyed by the name the manifest and runtime use (transformers.js layout: onnx/model*.onnx).
GRAPH_FILES = {
    "model": "onnx/model.onnx",
    "model_quantized": "onnx/model_quantized.onnx",
    "fsp_head": "onnx/fsp_head.onnx",
    "fsp_head_quantized": "onnx/fsp_head_quantized.onnx",
}

# Sampling defaults of the seed (temperature 0.8, top-p 0.9); written to generation_config.json.
GENERATION_DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0, "max_new_tokens": 200}

# Backbone IO (HF optimum / onnxruntime-genai / transformers.js convention; KV layout BNSH).
INPUT_IDS = "input_ids"  # int64 [batch, seq]
ATTENTION_MASK = "attention_mask"  # int64 [batch, past + seq], 1 = real token
POSITION_IDS = "position_ids"  # int64 [batch, seq]
LOGITS = "logits"  # float32 [batch, seq, vocab]
LAST_HIDDEN = "last_hidden_state"  # float32 [batch, seq, dim], after the final norm
# FSP head IO
FSP_HIDDEN = "hidden_states"  # float32 [batch, seq, dim]
FSP_LOGITS = "fsp_logits"  # float32 [batch, seq, vocab]; sigmoid gives P(token in the next tau tokens)

# Symbolic dimension names
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int) -> str:
    return f"present.{i}.key"


def present_value(i: int) -> str:
    return f"present.{i}.value"


def backbone_inputs(n_layers: int) -> list[str]:
    names = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS]
    for i in range(n_layers):
        names += [past_key(i), past_value(i)]
    return names


def backbone_outputs(n_layers: int) -> list[str]:
    names = [LOGITS]
    for i in range(n_layers):
        names += [present_key(i), present_value(i)]
    return names + [LAST_HIDDEN]
