"""onnxruntime sessions and feeds for the FlashLM graphs: options, empty past, one backbone run."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from flashlm_core import artifacts as A
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError


def session_options(*, threads: int = 1) -> ort.SessionOptions:
    """Small-thread CPU options: decode of a 3.7M model gains little from more intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Per-step tensor shapes change every decode step; the arena would keep growing chunks.
    opts.enable_cpu_mem_arena = False
    return opts


def open_session(path_or_bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session, or CheckpointError when onnxruntime cannot load the graph (a damaged or foreign .onnx file)."""
    try:
        return ort.InferenceSession(path_or_bytes, sess_options=session_options(threads=threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
        where = path_or_bytes if isinstance(path_or_bytes, str) else "the graph"
        raise CheckpointError(f"{where}: onnxruntime {ort.__version__} cannot load it ({str(exc).splitlines()[0][:200]}); "
                              "re-export or re-download") from None


def shape_mismatch(session: ort.InferenceSession, cfg: ModelConfig) -> str | None:
    """None when the backbone graph's static dims agree with cfg (vocabulary rows, heads, head size), else what differs."""
    logits = session.get_outputs()[0].shape
    if isinstance(logits[-1], int) and logits[-1] != cfg.vocab_size:
        return f"the graph has {logits[-1]} vocabulary rows, the manifest's config {cfg.vocab_size}"
    for i in session.get_inputs():
        if i.name == A.past_key(0):
            heads, head_dim = i.shape[1], i.shape[3]
            if (isinstance(heads, int) and heads != cfg.n_heads) or (isinstance(head_dim, int) and head_dim != cfg.head_dim):
                return f"the graph's cache has {heads} heads of {head_dim}, the manifest's config {cfg.n_heads} of {cfg.head_dim}"
    return None


def io_mismatch(session: ort.InferenceSession, inputs: list[str], outputs: list[str]) -> str | None:
    """None when the session's IO names are exactly these, else a description of what it has."""
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in == inputs and got_out == outputs:
        return None
    return f"graph IO (inputs {got_in}, outputs {got_out}) differs from the FlashLM contract (inputs {inputs}, outputs {outputs})"


def takes_positions(session: ort.InferenceSession) -> bool:
    """True for a plain backbone (position_ids is an input), False for a contrib one."""
    return any(i.name == A.POSITION_IDS for i in session.get_inputs())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, computed stably in the input's precision."""
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def empty_past(cfg: ModelConfig, batch: int) -> list[np.ndarray]:
    """Zero-length past for the first step: [k0, v0, k1, v1, ...], each (batch, heads, 0, head_dim)."""
    return [np.zeros(cfg.kv_shape(batch, 0), np.float32) for _ in range(2 * cfg.n_layers)]


def backbone_feeds(cfg: ModelConfig, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray | None,
                   past: list[np.ndarray]) -> dict:
    """The backbone's feeds; position_ids None for a contrib graph, which has no such input."""
    feeds = {A.INPUT_IDS: input_ids, A.ATTENTION_MASK: attention_mask}
    if position_ids is not None:
        feeds[A.POSITION_IDS] = position_ids
    for i in range(cfg.n_layers):
        feeds[A.past_key(i)] = past[2 * i]
        feeds[A.past_value(i)] = past[2 * i + 1]
    return feeds


def run_backbone(session: ort.InferenceSession, cfg: ModelConfig, input_ids: np.ndarray, *, past: list[np.ndarray] | None = None,
                 attention_mask: np.ndarray | None = None, position_ids: np.ndarray | None = None):
    """One graph run without padding helpers: returns (logits, presents, hidden).

    input_ids (B, S); past from a previous call (or None for an empty past); positions default to
    past_len.. past_len + S - 1 and the mask to all ones. Runs plain and contrib graphs alike (a contrib
    graph derives the positions from the mask: pass it no position_ids and no left padding).
    """
    B, S = input_ids.shape
    past = past if past is not None else empty_past(cfg, B)
    past_len = past[0].shape[2]
    if attention_mask is None:
        attention_mask = np.ones((B, past_len + S), np.int64)
    if position_ids is None and takes_positions(session):
        position_ids = np.broadcast_to(np.arange(past_len, past_len + S, dtype=np.int64), (B, S)).copy()
    out = session.run(A.backbone_outputs(cfg, A.PLAIN), backbone_feeds(cfg, input_ids.astype(np.int64), attention_mask, position_ids, past))
    return out[0], out[1:-1], out[-1]
