"""The artifact layout shared by training, exporter and runtime: file names, special tokens, ONNX IO names (stdlib only)."""
from __future__ import annotations

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"  # in every data, checkpoint and export folder
ONNX_DIR = "onnx"
EOT = "<|endoftext|>"  # ends every story; the tokenizer's id 0; also the pad and start-of-story token
MAX_VOCAB = 65536  # token files are uint16


def check_vocab_fits(vocab_size: int, error=ValueError) -> None:
    """Raise `error` when a vocabulary does not fit the uint16 token files."""
    if vocab_size > MAX_VOCAB:
        raise error(f"vocab size {vocab_size} does not fit the uint16 token files; use at most {MAX_VOCAB}")

# Graph files, keyed by the name the manifest and runtime use (transformers.js layout: onnx/model*.onnx).
GRAPH_FILES = {
    "model": "onnx/model.onnx",
    "model_quantized": "onnx/model_quantized.onnx",
    "fsp_head": "onnx/fsp_head.onnx",
    "fsp_head_quantized": "onnx/fsp_head_quantized.onnx",
}

# Backbone IO (HF optimum / onnxruntime-genai / transformers.js convention; the KV layout is
# ModelConfig.kv_shape: (batch, n_heads, seq, head_dim), keys stored after RoPE).
INPUT_IDS = "input_ids"  # int64 [batch, seq]
ATTENTION_MASK = "attention_mask"  # int64 [batch, past + seq], 1 = real token
POSITION_IDS = "position_ids"  # int64 [batch, seq]
LOGITS = "logits"  # float32 [batch, seq, vocab]
LAST_HIDDEN = "last_hidden_state"  # float32 [batch, seq, dim], after the final norm
# Contrib graphs only: the next-token distribution of each row's last position, so a decode step's sampler reads
# TOP_N numbers instead of passing over all vocab logits in numpy (cheaper in the graph: bench/decode_graph_parts.py).
TEMPERATURE = "temperature"  # float32 [1]: an initializer (1.0) that a caller may override (not in session.get_inputs())
TOP_PROBS = "top_probs"  # float32 [batch, TOP_N]: softmax(logits[:, -1] / temperature), the TOP_N largest, descending
TOP_IDS = "top_ids"  # int64 [batch, TOP_N]: their token ids (equal probabilities: the lower id first)
# 32: TopK's cost grows with it (bench/decode_graph_parts.py), and at the default sampling (temperature 0.8, top-p
# 0.9) the bundled model's nucleus seldom holds more than 32 tokens (docs/benchmarks.md); those steps sample from
# the logits instead.
TOP_N = 32
# FSP head IO
FSP_HIDDEN = "hidden_states"  # float32 [batch, seq, dim]
FSP_LOGITS = "fsp_logits"  # float32 [batch, seq, vocab]; sigmoid gives P(token in the next tau tokens)

# Symbolic dimension names
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


def past_key(i: int | str) -> str:  # i may be a placeholder, e.g. genai_config.json's "%d"
    return f"past_key_values.{i}.key"


def past_value(i: int | str) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int | str) -> str:
    return f"present.{i}.key"


def present_value(i: int | str) -> str:
    return f"present.{i}.value"


# Backbone graph variants (the manifest's "ops"): "plain" uses standard ONNX ops only (every client:
# transformers.js, onnxruntime-web, optimum, genai); "contrib" uses onnxruntime's fused CPU kernels
# (GroupQueryAttention with rotary, SkipSimplifiedLayerNormalization) and a KV buffer that can be shared
# between past and present. A contrib graph takes no position_ids: row r's positions are 0..n_r-1 with
# n_r = sum(attention_mask[r]), so a batch is right-padded (plain: left-padded, positions from the mask).
PLAIN, CONTRIB = OPS = ("plain", "contrib")
OPSET = 18  # the ONNX opset of every graph: ReduceMean with axes as an input needs 18 (onnxruntime >= 1.18 runs it)
MASK_VALUE = -1e9  # the additive bias of a masked attention logit, in torch and in ONNX alike
MODEL_NAME = "flashlm-v10-fsp"  # the shipped model: its checkpoint folder under models/ and its id in the server API
DATA_DIR = "data/tinystories"  # the prepared data folder the commands write and read when none is given


def _tensor(name: str, dtype: str, shape) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def backbone_io(cfg, ops: str) -> dict[str, list[dict]]:
    """The backbone's IO contract, in graph order: {"inputs": [...], "outputs": [...]}, each {"name", "dtype", "shape"}
    (ints and symbolic dim names), the form of the manifest's graphs[...] entries. cfg is a ModelConfig; the graph
    builder declares exactly this, the exporter checks each written graph against it, and clients read it there."""
    past, present = cfg.kv_shape(BATCH, PAST), cfg.kv_shape(BATCH, TOTAL)
    inputs = [_tensor(INPUT_IDS, "int64", (BATCH, SEQ)), _tensor(ATTENTION_MASK, "int64", (BATCH, TOTAL))]
    if ops == PLAIN:
        inputs.append(_tensor(POSITION_IDS, "int64", (BATCH, SEQ)))
    outputs = [_tensor(LOGITS, "float32", (BATCH, SEQ, cfg.vocab_size))]
    for i in range(cfg.n_layers):
        inputs += [_tensor(past_key(i), "float32", past), _tensor(past_value(i), "float32", past)]
        outputs += [_tensor(present_key(i), "float32", present), _tensor(present_value(i), "float32", present)]
    outputs.append(_tensor(LAST_HIDDEN, "float32", (BATCH, SEQ, cfg.dim)))
    if ops == CONTRIB:
        inputs.append(_tensor(TEMPERATURE, "float32", (1,)))
        outputs += [_tensor(TOP_PROBS, "float32", (BATCH, TOP_N)), _tensor(TOP_IDS, "int64", (BATCH, TOP_N))]
    return {"inputs": inputs, "outputs": outputs}


def fsp_io(cfg) -> dict[str, list[dict]]:
    """The FSP head's IO contract, in backbone_io's form."""
    return {"inputs": [_tensor(FSP_HIDDEN, "float32", (BATCH, SEQ, cfg.dim))],
            "outputs": [_tensor(FSP_LOGITS, "float32", (BATCH, SEQ, cfg.vocab_size))]}


DEFAULTED_INPUTS = (TEMPERATURE,)  # graph inputs with an initializer: onnxruntime leaves them out of get_inputs()


def backbone_inputs(cfg, ops: str) -> list[str]:
    """The input names onnxruntime lists for a backbone (session.get_inputs()), in order."""
    return [t["name"] for t in backbone_io(cfg, ops)["inputs"] if t["name"] not in DEFAULTED_INPUTS]


def backbone_outputs(cfg, ops: str) -> list[str]:
    return [t["name"] for t in backbone_io(cfg, ops)["outputs"]]
