"""Builds the backbone (plain or contrib ops) and FSP-head ONNX graphs directly from checkpoint weights.

Like onnxruntime-genai's model builder, we write the graph ourselves instead of tracing torch: the IO
contract, dynamic axes, zero-length past and the explicit lm_head initializer (so int8 quantizes it)
are then true by construction, and the bytes are deterministic. Every export is validated against
the torch model (flashlm_export.validate).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flashlm_core import artifacts as A
from flashlm_core.config import ModelConfig

PRODUCER = "flashlm-export"


class _Graph:
    """A tiny node/initializer accumulator with unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, name: str | None = None, outputs: list[str] | None = None, **attrs):
        self._n += 1
        name = name or f"{op_type}_{self._n}"
        outputs = outputs or [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs if n_out > 1 else outputs[0]


def _f32(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _rms_norm(g: _Graph, x: str, weight: str, eps: str, two: str, name: str) -> str:
    # Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul: the pattern onnxruntime fuses into
    # SimplifiedLayerNormalization at graph-optimization time.
    sq = g.op("Pow", [x, two], name=f"{name}/pow")
    mean = g.op("ReduceMean", [sq, "axes_last"], name=f"{name}/mean", keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [mean, eps], name=f"{name}/add_eps")], name=f"{name}/sqrt")
    return g.op("Mul", [g.op("Div", [x, std], name=f"{name}/div"), weight], name=f"{name}/scale")


ROPE_ROTATION = "rope_rotation"  # constant (hd, hd) MatMul operand: never quantized


def rope_rotation_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the RoPE rotation MatMuls, which int8 quantization must leave alone."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and ROPE_ROTATION in n.input]


def _rope(g: _Graph, x: str, cos: str, sin: str, name: str) -> str:
    """Interleaved-pair RoPE on x (B, n, S, hd): x*cos + rotate(x)*sin.

    cos/sin (B, 1, S, hd) repeat each frequency twice; rotate(x) = x @ R maps each pair
    (x0, x1) to (-x1, x0) (R is a signed permutation, so the MatMul is exact). 4 nodes: decode
    time of this small model is mostly per-node dispatch, so fewer nodes is faster.
    """
    rotated = g.op("MatMul", [x, ROPE_ROTATION], name=f"{name}/rotate")
    a = g.op("Mul", [x, cos], name=f"{name}/mul_cos")
    b = g.op("Mul", [rotated, sin], name=f"{name}/mul_sin")
    return g.op("Add", [a, b], name=f"{name}/add")


def _head_T(cfg: ModelConfig, state: dict) -> np.ndarray:
    """The (dim, vocab) head of the backbone and the FSP head: the embedding when tied. Stored as its own initializer
    because MatMul needs B transposed, and so that int8 quantizes the head while the embedding Gather stays fp32."""
    head = state["tok_emb.weight"] if cfg.tie_embeddings else state["lm_head.weight"]
    return np.ascontiguousarray(_f32(head).T)


def _constants(g: _Graph, cfg: ModelConfig, state: dict) -> None:
    """Shared initializers: embedding, transposed head, norm/RoPE/shape constants (the order fixes the bytes)."""
    D, H, hd = cfg.dim, cfg.n_heads, cfg.head_dim
    f32 = np.float32
    g.const("embed.weight", _f32(state["tok_emb.weight"]))
    g.const("lm_head.weight_T", _head_T(cfg, state))
    g.const("two", np.array(2.0, f32))
    g.const("eps", np.array(cfg.norm_eps, f32))
    g.const("axes_last", np.array([-1], np.int64))
    rotation = np.zeros((hd, hd), f32)
    rotation[1::2, 0::2] = -np.eye(hd // 2, dtype=f32)  # out[2p] = -x[2p+1]
    rotation[0::2, 1::2] = np.eye(hd // 2, dtype=f32)  # out[2p+1] = x[2p]
    g.const(ROPE_ROTATION, rotation)
    g.const("shape_heads3", np.array([0, 0, 3 * H, hd], np.int64))
    g.const("split_qk_v", np.array([2 * H, H], np.int64))
    g.const("split_q_k", np.array([H, H], np.int64))
    g.const("split_ff", np.array([cfg.d_ff, cfg.d_ff], np.int64))
    g.const("shape_merge", np.array([0, 0, D], np.int64))
    g.const("zero_f", np.array(0.0, f32))
    g.const("mask_value", np.array(A.MASK_VALUE, f32))
    g.const("one_i", np.array(1, np.int64))
    g.const("axes_01", np.array([0, 1], np.int64))
    g.const("axes_12", np.array([1, 2], np.int64))
    g.const("axes_2", np.array([2], np.int64))
    g.const("axis1_i", np.array([1], np.int64))
    inv_freq = np.array(cfg.rope_inv_freq, dtype=np.float64)
    g.const("inv_freq2", np.repeat(inv_freq, 2).astype(f32))  # (hd,) each frequency twice


def _rope_tables(g: _Graph) -> tuple[str, str]:
    """cos and sin (B, 1, S, hd) from position_ids."""
    pos = g.op("Cast", [A.POSITION_IDS], name="rope/pos_f", to=TensorProto.FLOAT)
    angles = g.op("Mul", [g.op("Unsqueeze", [pos, "axes_2"], name="rope/unsq"), "inv_freq2"], name="rope/angles")  # (B, S, hd)
    angles = g.op("Unsqueeze", [angles, "axis1_i"], name="rope/unsq_heads")  # (B, 1, S, hd)
    return g.op("Cos", [angles], name="rope/cos"), g.op("Sin", [angles], name="rope/sin")


def _attention_bias(g: _Graph) -> str:
    """(B, 1, S, T_total): 0 where query i (absolute past + i) may see key j, else A.MASK_VALUE."""
    total = g.op("Gather", [g.op("Shape", [A.ATTENTION_MASK], name="mask/shape"), "one_i"], name="mask/total", axis=0)
    seq = g.op("Gather", [g.op("Shape", [A.INPUT_IDS], name="ids/shape"), "one_i"], name="mask/seq", axis=0)
    past = g.op("Sub", [total, seq], name="mask/past")
    key_idx = g.op("Range", ["zero_i", total, "one_i"], name="mask/key_idx")  # (T_total,)
    g.const("zero_i", np.array(0, np.int64))
    query_idx = g.op("Range", [past, total, "one_i"], name="mask/query_idx")  # (S,)
    k2 = g.op("Unsqueeze", [key_idx, "axes_01"], name="mask/k2")  # (1, 1, T_total)
    q2 = g.op("Unsqueeze", [g.op("Unsqueeze", [query_idx, "axis1_i"], name="mask/q1"), "axes_01"], name="mask/q2")  # (1, 1, S, 1)
    causal = g.op("LessOrEqual", [k2, q2], name="mask/causal")  # (1, 1, S, T_total)
    keep = g.op("Cast", [g.op("Unsqueeze", [A.ATTENTION_MASK, "axes_12"], name="mask/unsq")], name="mask/bool", to=TensorProto.BOOL)  # (B, 1, 1, T_total)
    return g.op("Where", [g.op("And", [causal, keep], name="mask/and"), "zero_f", "mask_value"], name="mask/bias")


def _block_weights(g: _Graph, cfg: ModelConfig, state: dict, p: str) -> None:
    """Block p's initializers, matmul weights transposed to (in, out); 1/sqrt(head_dim) folded into W_q."""
    D = cfg.dim
    wqkv = _f32(state[f"{p}.attn.wqkv.weight"]).copy()  # (3D, D)
    wqkv[:D] *= 1.0 / np.sqrt(cfg.head_dim)  # RoPE is linear, so the scale commutes with it
    g.const(f"{p}.attn_norm.weight", _f32(state[f"{p}.attn_norm.weight"]))
    g.const(f"{p}.ffn_norm.weight", _f32(state[f"{p}.ffn_norm.weight"]))
    g.const(f"{p}.wqkv_T", np.ascontiguousarray(wqkv.T))
    g.const(f"{p}.wo_T", np.ascontiguousarray(_f32(state[f"{p}.attn.wo.weight"]).T))
    g.const(f"{p}.w_gate_up_T", np.ascontiguousarray(_f32(state[f"{p}.ffn.w_gate_up.weight"]).T))
    g.const(f"{p}.w_down_T", np.ascontiguousarray(_f32(state[f"{p}.ffn.w_down.weight"]).T))


def _attention(g: _Graph, i: int, h: str, cos: str, sin: str, bias: str) -> str:
    """Layer i's attention on normed h (B, S, D) with the KV cache in and out; returns (B, S, D) before wo."""
    p = f"blocks.{i}"
    qkv = g.op("Reshape", [g.op("MatMul", [h, f"{p}.wqkv_T"], name=f"{p}/qkv"), "shape_heads3"], name=f"{p}/qkv_heads")  # (B, S, 3H, hd)
    qkv = g.op("Transpose", [qkv], name=f"{p}/qkv_bnsh", perm=[0, 2, 1, 3])  # (B, 3H, S, hd): one transpose for q, k, v
    qk, v = g.op("Split", [qkv, "split_qk_v"], n_out=2, name=f"{p}/split_qk_v", axis=1)
    qk = _rope(g, qk, cos, sin, f"{p}/rope")  # (B, 2H, S, hd)
    q, k = g.op("Split", [qk, "split_q_k"], n_out=2, name=f"{p}/split_q_k", axis=1)  # (B, H, S, hd) each
    k_all = g.op("Concat", [A.past_key(i), k], name=f"{p}/present_k", outputs=[A.present_key(i)], axis=2)  # (B, H, T, hd)
    v_all = g.op("Concat", [A.past_value(i), v], name=f"{p}/present_v", outputs=[A.present_value(i)], axis=2)
    scores = g.op("MatMul", [q, g.op("Transpose", [k_all], name=f"{p}/k_t", perm=[0, 1, 3, 2])], name=f"{p}/scores")  # (B, H, S, T)
    probs = g.op("Softmax", [g.op("Add", [scores, bias], name=f"{p}/bias")], name=f"{p}/softmax", axis=-1)
    y = g.op("Transpose", [g.op("MatMul", [probs, v_all], name=f"{p}/attn_v")], name=f"{p}/y_bsnh", perm=[0, 2, 1, 3])
    return g.op("Reshape", [y, "shape_merge"], name=f"{p}/merge")  # (B, S, D)


def _block(g: _Graph, i: int, x: str, cos: str, sin: str, bias: str) -> str:
    """x + attn(norm(x)), then + SwiGLU(norm(x)); (B, S, D) in and out."""
    p = f"blocks.{i}"
    h = _rms_norm(g, x, f"{p}.attn_norm.weight", "eps", "two", f"{p}/attn_norm")
    y = _attention(g, i, h, cos, sin, bias)
    x = g.op("Add", [x, g.op("MatMul", [y, f"{p}.wo_T"], name=f"{p}/wo")], name=f"{p}/resid_attn")
    h = _rms_norm(g, x, f"{p}.ffn_norm.weight", "eps", "two", f"{p}/ffn_norm")
    return g.op("Add", [x, _swiglu(g, h, p)], name=f"{p}/resid_ffn")


def _swiglu(g: _Graph, h: str, p: str) -> str:
    """down(silu(gate) * up) from the packed gate_up weight of block p, in both graph variants; (B, S, D) in and out."""
    gate, up = g.op("Split", [g.op("MatMul", [h, f"{p}.w_gate_up_T"], name=f"{p}/gate_up"), "split_ff"], n_out=2, name=f"{p}/split_ff", axis=-1)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"{p}/sigmoid")], name=f"{p}/silu")
    return g.op("MatMul", [g.op("Mul", [silu, up], name=f"{p}/glu"), f"{p}.w_down_T"], name=f"{p}/down")


ELEM_TYPES = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}


def _value_infos(tensors: list[dict]) -> list:
    return [helper.make_tensor_value_info(t["name"], ELEM_TYPES[t["dtype"]], t["shape"]) for t in tensors]


def _backbone_io(cfg: ModelConfig, ops: str) -> tuple[list, list]:
    """Graph inputs and outputs as artifacts.backbone_io declares them."""
    io = A.backbone_io(cfg, ops)
    return _value_infos(io["inputs"]), _value_infos(io["outputs"])


def build_backbone(cfg: ModelConfig, state: dict, *, opset: int, ops: str) -> onnx.ModelProto:
    """The decoder: prefill and decode in one graph, KV cache in/out (BNSH), logits and final hidden."""
    if ops == A.CONTRIB:
        return _build_contrib_backbone(cfg, state, opset=opset)
    g = _Graph()
    _constants(g, cfg, state)
    cos, sin = _rope_tables(g)
    bias = _attention_bias(g)
    x = g.op("Gather", ["embed.weight", A.INPUT_IDS], name="embed", axis=0)  # (B, S, D)
    for i in range(cfg.n_layers):
        _block_weights(g, cfg, state, f"blocks.{i}")
        x = _block(g, i, x, cos, sin, bias)
    g.const("final_norm.weight", _f32(state["norm.weight"]))
    hidden = _rms_norm(g, x, "final_norm.weight", "eps", "two", "final_norm")
    g.op("Identity", [hidden], name="hidden_out", outputs=[A.LAST_HIDDEN])
    g.op("MatMul", [hidden, "lm_head.weight_T"], name="lm_head", outputs=[A.LOGITS])
    inputs, outputs = _backbone_io(cfg, A.PLAIN)
    return _model(helper.make_graph(g.nodes, "flashlm_backbone", inputs, outputs, g.inits), opset)


def _build_contrib_backbone(cfg: ModelConfig, state: dict, *, opset: int) -> onnx.ModelProto:
    """The same decoder on onnxruntime's fused CPU kernels: 10 nodes a block where the plain graph has ~33.

    Per block: SkipSimplifiedLayerNormalization (residual add + RMSNorm in one node), MatMul qkv,
    GroupQueryAttention (interleaved RoPE from a cos/sin cache, causal attention over the cache, KV append),
    MatMul wo, SkipSimplifiedLayerNormalization, MatMul gate_up, Split, SiLU·up (fused by onnxruntime), MatMul down.
    GroupQueryAttention takes the per-row lengths (seqlens_k = sum(mask) - 1) instead of a mask and writes the new
    keys at index seqlens_k[r] - S + 1.. of row r: when the caller binds past and present to one (B, H, max_seq_len,
    hd) buffer, a decode step appends in place instead of copying the whole cache (the plain graph's Concat).
    The weights are the plain graph's initializers, 1/sqrt(hd) folded into W_q included (so scale=1).
    """
    g = _Graph()
    _constants(g, cfg, state)
    inv_freq = np.array(cfg.rope_inv_freq, dtype=np.float64)
    angles = np.arange(cfg.max_seq_len, dtype=np.float64)[:, None] * inv_freq[None]  # (max_seq_len, hd/2)
    g.const("cos_cache", np.cos(angles).astype(np.float32))
    g.const("sin_cache", np.sin(angles).astype(np.float32))
    lengths = g.op("ReduceSum", [A.ATTENTION_MASK, "axis1_i"], name="seqlens/sum", keepdims=0)  # (B,) real tokens per row
    seqlens_k = g.op("Cast", [g.op("Sub", [lengths, "one_i"], name="seqlens/minus1")], name="seqlens_k", to=TensorProto.INT32)
    total = g.op("Gather", [g.op("Shape", [A.ATTENTION_MASK], name="mask/shape"), "one_i"], name="mask/total", axis=0)
    total = g.op("Cast", [total], name="total_sequence_length", to=TensorProto.INT32)  # scalar
    x = g.op("Gather", ["embed.weight", A.INPUT_IDS], name="embed", axis=0)  # (B, S, D)
    delta = None  # the last sub-block's output, added to x by the next SkipSimplifiedLayerNormalization
    for i in range(cfg.n_layers):
        p = f"blocks.{i}"
        _block_weights(g, cfg, state, p)
        if delta is None:  # plain ops: onnxruntime fuses them into SimplifiedLayerNormalization (the checker knows no such op)
            h = _rms_norm(g, x, f"{p}.attn_norm.weight", "eps", "two", f"{p}/attn_norm")
        else:
            h, x = _skip_norm(g, delta, x, f"{p}.attn_norm.weight", cfg.norm_eps, f"{p}/attn_norm")
        qkv = g.op("MatMul", [h, f"{p}.wqkv_T"], name=f"{p}/qkv")  # (B, S, 3D) packed q, k, v
        y = g.op("GroupQueryAttention", [qkv, "", "", A.past_key(i), A.past_value(i), seqlens_k, total, "cos_cache", "sin_cache"],
                 n_out=3, name=f"{p}/gqa", outputs=[f"{p}/attn", A.present_key(i), A.present_value(i)], domain="com.microsoft",
                 num_heads=cfg.n_heads, kv_num_heads=cfg.n_heads, do_rotary=1, rotary_interleaved=1, scale=1.0)[0]
        h, x = _skip_norm(g, g.op("MatMul", [y, f"{p}.wo_T"], name=f"{p}/wo"), x, f"{p}.ffn_norm.weight", cfg.norm_eps, f"{p}/ffn_norm")
        delta = _swiglu(g, h, p)
    g.const("final_norm.weight", _f32(state["norm.weight"]))
    hidden, _ = _skip_norm(g, delta, x, "final_norm.weight", cfg.norm_eps, "final_norm", out=A.LAST_HIDDEN)
    logits = g.op("MatMul", [hidden, "lm_head.weight_T"], name="lm_head", outputs=[A.LOGITS])
    _next_token_top(g, logits)
    inputs, outputs = _backbone_io(cfg, A.CONTRIB)
    used = {name for node in g.nodes for name in node.input}  # _constants also holds the plain graph's RoPE/mask tables
    graph = helper.make_graph(g.nodes, "flashlm_backbone_contrib", inputs, outputs, [t for t in g.inits if t.name in used])
    return _model(graph, opset, contrib=True)


def _next_token_top(g: _Graph, logits: str) -> None:
    """TOP_PROBS and TOP_IDS: the TOP_N most likely next tokens of each row's last position at TEMPERATURE.

    The sampler's full passes over the vocabulary (max, scale, exp, sum) run here, on logits the step has just
    written, instead of as ~8 numpy calls on cold caches; a decode step's sampler then needs only these
    (B, TOP_N) numbers unless the nucleus is wider. TEMPERATURE is an input with a default (an initializer of
    the same name), so clients that do not know it run the graph unchanged. Shapes: logits (B, S, V) -> (B, V).
    """
    g.const(A.TEMPERATURE, np.array([1.0], np.float32))
    g.const("top_n", np.array([A.TOP_N], np.int64))
    g.const("minus_one_i", np.array(-1, np.int64))
    last = g.op("Gather", [logits, "minus_one_i"], name="top/last", axis=1)  # (B, V): each row's last position
    x = g.op("Div", [last, A.TEMPERATURE], name="top/scale")
    probs = g.op("Softmax", [x], name="top/softmax", axis=-1)  # (B, V)
    # TopK of x, not of the probabilities: exp can round two near-equal logits to one probability, and at
    # temperature 1 x is the logits themselves, so top_ids[:, 0] is their argmax (ties: the lower id, as argmax)
    _, top_ids = g.op("TopK", [x, "top_n"], n_out=2, name="top/topk", outputs=["top/values", A.TOP_IDS], axis=-1, largest=1, sorted=1)
    g.op("GatherElements", [probs, top_ids], name="top/probs", outputs=[A.TOP_PROBS], axis=-1)


def _skip_norm(g: _Graph, delta: str, x: str, weight: str, eps: float, name: str, out: str | None = None) -> tuple[str, str]:
    """(RMSNorm(x + delta) * weight, x + delta) in one com.microsoft node."""
    outs = g.op("SkipSimplifiedLayerNormalization", [delta, x, weight], n_out=4, name=name, domain="com.microsoft", epsilon=eps,
                outputs=[out or f"{name}_out", "", "", f"{name}_sum"])
    return outs[0], outs[3]


def build_fsp_head(cfg: ModelConfig, state: dict, *, opset: int) -> onnx.ModelProto:
    """hidden_states (B, S, dim) -> fsp_logits (B, S, vocab) = (h @ W_fsp^T) @ E^T."""
    g = _Graph()
    g.const("fsp_proj.weight_T", np.ascontiguousarray(_f32(state["fsp_proj.weight"]).T))
    g.const("lm_head.weight_T", _head_T(cfg, state))
    proj = g.op("MatMul", [A.FSP_HIDDEN, "fsp_proj.weight_T"], name="fsp_proj")
    g.op("MatMul", [proj, "lm_head.weight_T"], name="fsp_lm_head", outputs=[A.FSP_LOGITS])
    graph = helper.make_graph(
        g.nodes, "flashlm_fsp_head",
        _value_infos(A.fsp_io(cfg)["inputs"]),
        _value_infos(A.fsp_io(cfg)["outputs"]),
        g.inits,
    )
    return _model(graph, opset)


def _model(graph: onnx.GraphProto, opset: int, contrib: bool = False) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER, producer_version="1")
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime >= 1.16
    return model


def half_embedding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store the embedding table of a (quantized) backbone in float16 and cast the gathered rows
    back to float32: (vocab, dim) 4 MB -> 2 MB on disk and in memory, one Cast node more.

    Only rows are gathered, never multiplied, so fp16's 11-bit mantissa costs ~5e-4 relative
    error on the inputs of layer 0; the int8 gate measures the effect on logits and PPL.
    """
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    table = numpy_helper.to_array(model.graph.initializer[inits["embed.weight"]])
    model.graph.initializer[inits["embed.weight"]].CopyFrom(numpy_helper.from_array(table.astype(np.float16), "embed.weight"))
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Gather" and node.input[0] == "embed.weight":
            rows = node.output[0]
            node.output[0] = f"{rows}_fp16"
            cast = helper.make_node("Cast", [node.output[0]], [rows], name="embed/to_fp32", to=TensorProto.FLOAT)
            model.graph.node.insert(i + 1, cast)
            return model
    raise ValueError("no embedding Gather in the graph")
