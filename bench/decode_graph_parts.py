"""Two decode-graph questions timed on their own, onnxruntime only, 1 intra-op thread, medians:

    python bench/decode_graph_parts.py [--model runtime/flashlm_runtime/default_model] [--json FILE]

1. What the contrib graph's next-token top outputs (top_probs, top_ids) cost: the export's int8 graph against a
   copy with the top/* nodes removed, interleaved, a decode step (shared in-place cache, 200 steps from 1 cached
   token) at batch 1 and 8, and a 256-token prefill.
2. Why batch 8 does not pay 4x: one GroupQueryAttention node (8 heads of 32, rotary) at batch 8 and 100 cached
   tokens, with its cache hot in L2 and rotating over four layers' caches, fp32 and fp16; and the same attention
   as FusedMatMul + Softmax + MatMul over the whole (B, 8, 256, 32) shared buffer; and onnxruntime's two other
   attention kernels with a KV cache (com.microsoft MultiHeadAttention, ONNX Attention of opset 23), which
   concatenate past and new keys into a fresh present as the plain graph does.
3. What a batch row costs the attention: GroupQueryAttention (cache in L2) at batch 1 and 8 and 1, 100 and 200
   cached tokens, and what one more cached token of a row costs, also as bytes of K and V cache read per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from flashlm_core import artifacts as A
from flashlm_runtime.manifest import DEFAULT_MODEL_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

H, HD, M = 8, 32, 256  # heads, head dim, cache length (the model's)


def options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def without_top(path: Path, out: Path) -> Path:
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if not n.name.startswith("top/")]
    outputs = [o for o in model.graph.output if o.name not in (A.TOP_PROBS, A.TOP_IDS)]
    del model.graph.node[:], model.graph.output[:]
    model.graph.node.extend(nodes)
    model.graph.output.extend(outputs)
    onnx.save(model, str(out))
    return out


def step_us(session: ort.InferenceSession, batch: int, n_layers: int, steps: int = 200) -> float:
    """Median us of a decode step with past and present bound to one buffer per cache tensor (the runtime's way)."""
    keep = [np.full((batch, 1), 5, np.int64), np.zeros((batch, M), np.int64)]
    kv = [np.zeros((batch, H, M, HD), np.float32) for _ in range(2 * n_layers)]
    io = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in keep + kv]
    io.bind_ortvalue_input(A.INPUT_IDS, values[0])
    io.bind_ortvalue_input(A.ATTENTION_MASK, values[1])
    for i in range(n_layers):
        for j, (past, present) in enumerate(((A.past_key(i), A.present_key(i)), (A.past_value(i), A.present_value(i)))):
            io.bind_ortvalue_input(past, values[2 + 2 * i + j])
            io.bind_ortvalue_output(present, values[2 + 2 * i + j])
    for out in session.get_outputs():
        if not out.name.startswith("present"):
            io.bind_output(out.name)
    times = []
    for s in range(steps):
        keep[1][:, s] = 1
        t = time.perf_counter()
        session.run_with_iobinding(io)
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def prefill_ms(session: ort.InferenceSession, n_layers: int) -> float:
    ids = np.random.default_rng(0).integers(1, 4096, (1, M)).astype(np.int64)
    feeds = {A.INPUT_IDS: ids, A.ATTENTION_MASK: np.ones_like(ids)}
    for i in range(n_layers):
        feeds[A.past_key(i)] = feeds[A.past_value(i)] = np.zeros((1, H, 0, HD), np.float32)
    t = time.perf_counter()
    session.run([A.LOGITS], feeds)
    return 1e3 * (time.perf_counter() - t)


def top_cost(model_dir: Path, repeats: int) -> dict:
    graph = model_dir / A.GRAPH_FILES["model_quantized"]
    n_layers = json.loads((model_dir / A.MANIFEST).read_text())["config"]["n_layers"]
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {"with top": ort.InferenceSession(str(graph), options(), providers=["CPUExecutionProvider"]),
                    "without top": ort.InferenceSession(str(without_top(graph, Path(tmp) / "m.onnx")), options(), providers=["CPUExecutionProvider"])}
        raw = {k: {"step_b1_us": [], "step_b8_us": [], "prefill256_ms": []} for k in sessions}
        for _ in range(repeats):
            for name, s in sessions.items():
                raw[name]["step_b1_us"].append(step_us(s, 1, n_layers))
                raw[name]["step_b8_us"].append(step_us(s, 8, n_layers))
                raw[name]["prefill256_ms"].extend(prefill_ms(s, n_layers) for _ in range(8))
    return {name: {k: statistics.median(v) for k, v in cells.items()} for name, cells in raw.items()}


def median_us(run, runs: int) -> float:
    """Median us of run(i) over i = 0 .. runs - 1."""
    times = []
    for i in range(runs):
        t = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def _session(nodes, inputs, outputs, inits, *, opset: int = 18, ir_version: int = 9) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = ir_version
    return ort.InferenceSession(model.SerializeToString(), options(), providers=["CPUExecutionProvider"])


def gqa_us(dtype, caches: int, batch: int = 8, past: int = 100, runs: int = 2000) -> float:
    """One GroupQueryAttention (rotary, shared past/present buffer) at `past` cached tokens, cycling over
    `caches` separate cache buffers (4 = a step's four layers, which no longer fit L2 together at batch 8)."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    angles = np.arange(M)[:, None] / 10000 ** (np.arange(0, HD // 2) * 2 / HD)[None]
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "pk", "pv", "seqlens_k", "total", "cos", "sin"], ["y", "k", "v"],
                            domain="com.microsoft", num_heads=H, kv_num_heads=H, do_rotary=1, rotary_interleaved=1, scale=1.0)
    session = _session([node], [helper.make_tensor_value_info("qkv", elem, ["B", 1, 3 * H * HD]),
                                helper.make_tensor_value_info("pk", elem, ["B", H, "P", HD]),
                                helper.make_tensor_value_info("pv", elem, ["B", H, "P", HD]),
                                helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
                                helper.make_tensor_value_info("total", TensorProto.INT32, [])],
                       [helper.make_tensor_value_info(n, elem, None) for n in ("y", "k", "v")],
                       [numpy_helper.from_array(np.cos(angles).astype(dtype), "cos"), numpy_helper.from_array(np.sin(angles).astype(dtype), "sin")])
    rng = np.random.default_rng(0)
    bindings = []
    for _ in range(caches):
        k, v = (ort.OrtValue.ortvalue_from_numpy(rng.random((batch, H, M, HD)).astype(dtype)) for _ in range(2))
        io = session.io_binding()
        io.bind_cpu_input("qkv", rng.random((batch, 1, 3 * H * HD)).astype(dtype))
        io.bind_ortvalue_input("pk", k)
        io.bind_ortvalue_output("k", k)
        io.bind_ortvalue_input("pv", v)
        io.bind_ortvalue_output("v", v)
        io.bind_cpu_input("seqlens_k", np.full(batch, past, np.int32))
        io.bind_cpu_input("total", np.array(M, np.int32))
        io.bind_output("y")
        bindings.append((io, k, v))
    return median_us(lambda i: session.run_with_iobinding(bindings[i % caches][0]), runs)


def matmul_attention_us(caches: int, batch: int = 8, past: int = 100, runs: int = 2000) -> float:
    """The same attention as FusedMatMul(q, K^T) + mask + Softmax + MatMul(V) over the whole shared buffer."""
    nodes = [helper.make_node("FusedMatMul", ["q", "kb"], ["s"], domain="com.microsoft", transB=1, alpha=1.0),
             helper.make_node("Add", ["s", "bias"], ["sb"]), helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "vb"], ["y"])]
    f = TensorProto.FLOAT
    session = _session(nodes, [helper.make_tensor_value_info("q", f, ["B", H, 1, HD]), helper.make_tensor_value_info("kb", f, ["B", H, M, HD]),
                               helper.make_tensor_value_info("vb", f, ["B", H, M, HD]), helper.make_tensor_value_info("bias", f, ["B", 1, 1, M])],
                       [helper.make_tensor_value_info("y", f, None)], [])
    rng = np.random.default_rng(0)
    bias = np.zeros((batch, 1, 1, M), np.float32)
    bias[..., past + 1:] = -1e9
    feeds = [{"q": rng.random((batch, H, 1, HD), np.float32), "kb": rng.random((batch, H, M, HD), np.float32),
              "vb": rng.random((batch, H, M, HD), np.float32), "bias": bias} for _ in range(caches)]
    return median_us(lambda i: session.run(None, feeds[i % caches]), runs)


def concat_attention_us(op: str, batch: int = 8, past: int = 100, runs: int = 2000) -> float:
    """MultiHeadAttention (com.microsoft) or Attention (opset 23): q, k, v (B, 1, 256) and a (B, 8, past, 32) past
    cache, concatenated into a new present; no rotary (the q and k inputs stand for rotated ones)."""
    f = TensorProto.FLOAT
    if op == "MultiHeadAttention":
        node = helper.make_node(op, ["q", "k", "v", "", "", "", "pk", "pv"], ["y", "k_out", "v_out"], domain="com.microsoft", num_heads=H)
    else:
        node = helper.make_node(op, ["q", "k", "v", "", "pk", "pv"], ["y", "k_out", "v_out"], q_num_heads=H, kv_num_heads=H)
    inputs = [helper.make_tensor_value_info(n, f, ["B", 1, H * HD]) for n in ("q", "k", "v")]
    inputs += [helper.make_tensor_value_info(n, f, ["B", H, "P", HD]) for n in ("pk", "pv")]
    session = _session([node], inputs, [helper.make_tensor_value_info(n, f, None) for n in ("y", "k_out", "v_out")], [],
                       opset=23, ir_version=10)  # opset 23 for Attention; MultiHeadAttention is com.microsoft's
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((batch, 1, H * HD), np.float32) for n in ("q", "k", "v")}
    feeds |= {n: rng.random((batch, H, past, HD), np.float32) for n in ("pk", "pv")}
    return median_us(lambda i: session.run(None, feeds), runs)


def row_cost(runs: int = 2000) -> dict:
    """GroupQueryAttention's time (one cache, hot) at batch 1 and 8 and 1, 100, 200 cached tokens, and from it
    what one more cached token of a row costs between 1 and 100 and between 100 and 200 cached tokens, also as
    bytes of K and V cache (2 KB a token of a row) read per second."""
    pasts = (1, 100, 200)
    cells = {(b, p): gqa_us(np.float32, 1, batch=b, past=p, runs=runs) for b in (1, 8) for p in pasts}
    kv_bytes = 2 * H * HD * 4  # K and V of one cached token of a row, all heads, fp32
    slopes = {}
    for b in (1, 8):
        for lo, hi in zip(pasts, pasts[1:]):
            ns = 1e3 * (cells[b, hi] - cells[b, lo]) / (b * (hi - lo))
            slopes[f"batch {b}, {lo}-{hi} cached"] = {"ns_per_cached_token_of_a_row": ns, "kv_read_gb_s": kv_bytes / ns}
    return {"us": {f"batch {b}, {p} cached": us for (b, p), us in cells.items()}, "per_cached_token": slopes}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="a contrib export (int8 graph)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from flashlm_core.cpu import cpu_kind

    print(f"{cpu_kind()}; onnxruntime {ort.__version__}, 1 thread, medians")
    top = top_cost(Path(args.model), args.repeats)
    for name, cells in top.items():
        print(f"{name:12s} step batch 1 {cells['step_b1_us']:6.1f} us, batch 8 {cells['step_b8_us']:7.1f} us, prefill 256 {cells['prefill256_ms']:5.2f} ms")
    attention = {"gqa fp32, cache in L2": gqa_us(np.float32, 1), "gqa fp32, 4 caches rotating": gqa_us(np.float32, 4),
                 "gqa fp16, cache in L2": gqa_us(np.float16, 1), "gqa fp16, 4 caches rotating": gqa_us(np.float16, 4),
                 "FusedMatMul+Softmax+MatMul, 4 caches rotating": matmul_attention_us(4),
                 "MultiHeadAttention (concatenating), cache in L2": concat_attention_us("MultiHeadAttention"),
                 "Attention opset 23 (concatenating), cache in L2": concat_attention_us("Attention")}
    print("one attention node, batch 8, 100 cached tokens:")
    for name, us in attention.items():
        print(f"  {name:48s} {us:6.1f} us")
    rows = row_cost()
    print("GroupQueryAttention, cache in L2: " + ", ".join(f"{k} {v:.1f} us" for k, v in rows["us"].items()))
    for name, cell in rows["per_cached_token"].items():
        print(f"  {name}: {cell['ns_per_cached_token_of_a_row']:.0f} ns a cached token of a row ({cell['kv_read_gb_s']:.1f} GB/s of K and V read)")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu_kind(), "onnxruntime": ort.__version__, "top_outputs": top,
                                               "attention_b8_past100_us": attention, "gqa_row_cost": rows}, indent=2))


if __name__ == "__main__":
    main()
