"""Where a decode step's time goes: onnxruntime's per-node profile of one step (batch 1 unless --batch), grouped.

    python bench/decode_profile.py --model EXPORT_DIR [--model EXPORT_DIR ...] [--past 1 100 250] [--threads 1] [--batch 1]

For each export (its int8 graph, through the runtime's own decode loop: the plain graph's run() with the cache
fed back, the contrib graph's shared in-place cache) and each cached length, 200 steps are profiled and the
median kernel time of every node summed by group: the weight GEMVs (the 16 block MatMuls and the lm_head, with
their activation quantization), attention, norms, the contrib graph's next-token top outputs, and the rest;
"step" is the median wall time of a decode step as the runtime takes it, measured without the profiler. The GEMVs are the floor a graph runtime can approach: the rest is what fusion removes.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

from flashlm_runtime import FlashLM
from flashlm_runtime import session as runtime_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

STEPS = 200
# node names as the exporter writes them (quantize_dynamic appends _quant; onnxruntime's fusions keep the name)
GEMV = re.compile(r"(/(qkv|wo|gate_up|down)|^lm_head)(_quant)?$")
ATTENTION = re.compile(r"/(gqa|qkv_heads|qkv_bnsh|split_qk_v|split_q_k|rope/.*|present_[kv]|k_t|scores|bias|softmax|attn_v|y_bsnh|merge)$|^(mask|rope)/")


def group_of(node: str) -> str:
    if node.startswith("top/"):  # the contrib graph's next-token top probabilities (the sampler's passes)
        return "top"
    if GEMV.search(node):
        return "weight GEMVs"
    if ATTENTION.search(node):
        return "attention"
    return "norms" if "norm" in node else "other"


def decode_steps(lm: FlashLM, past: int, batch: int = 1) -> tuple[list[str], list[float]]:
    """STEPS timed decode steps of `batch` rows after `past` cached tokens (re-prefilled before the window would
    slide): the kind of every run() in call order ("prefill" or "step") and the steps' wall times."""
    engine = lm._engine()
    kinds, wall = [], []
    while len(wall) < STEPS:
        engine.prefill([[5] * past] * batch)
        kinds.append("prefill")
        for _ in range(min(STEPS - len(wall), lm.config.max_seq_len - 1 - past)):  # stop before the window slides
            t = time.perf_counter()
            engine.step([7] * batch)
            wall.append(time.perf_counter() - t)
            kinds.append("step")
    return kinds, wall


def profile(model: str, past: int, threads: int, batch: int = 1) -> dict:
    """Median per-node kernel time (us) summed by group over STEPS profiled decode steps, and the median wall
    time of a step without the profiler (which adds ~1 us a node)."""
    make = runtime_session.session_options

    def profiling(*, threads: int = 1) -> ort.SessionOptions:
        opts = make(threads=threads)
        opts.enable_profiling = True
        return opts

    _, wall = decode_steps(FlashLM(model, threads=threads), past, batch)
    runtime_session.session_options = profiling  # the runtime's own options, with the profiler on
    try:
        lm = FlashLM(model, threads=threads)
    finally:
        runtime_session.session_options = make
    kinds, _ = decode_steps(lm, past, batch)
    trace = Path(lm.session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    steps = [span for span, kind in zip(runs, kinds) if kind == "step"]
    per_node = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            if any(a <= event["ts"] <= b for a, b in steps):
                per_node[event["name"][: -len("_kernel_time")]].append(event["dur"])
    groups = defaultdict(float)
    for node, times in per_node.items():
        groups[group_of(node)] += statistics.median(times)
    return {"ops": lm.ops, "nodes": len(per_node), "step_us": 1e6 * statistics.median(wall), **{g: groups[g] for g in
            ("weight GEMVs", "attention", "norms", "top", "other")}, "kernels_us": sum(groups.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--past", type=int, nargs="+", default=[1, 100, 250])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="rows a step (generate_batch's case)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from flashlm_core.cpu import cpu_kind

    rows = []
    print(f"{cpu_kind()}; int8 graphs, batch {args.batch}, {args.threads} thread(s), medians of {STEPS} profiled steps (us)")
    print(f"{'model':34s} {'past':>4} {'nodes':>5} {'step':>6} {'kernels':>8} {'GEMVs':>6} {'attn':>6} {'norms':>6} {'top':>6} {'other':>6}  GEMVs/step")
    for model in args.model:
        for past in args.past:
            r = {"model": model, "past": past, **profile(model, past, args.threads, args.batch)}
            rows.append(r)
            print(f"{Path(model).name + ' (' + r['ops'] + ')':34s} {past:>4} {r['nodes']:>5} {r['step_us']:>6.0f} {r['kernels_us']:>8.0f} "
                  f"{r['weight GEMVs']:>6.0f} {r['attention']:>6.0f} {r['norms']:>6.0f} {r['top']:>6.0f} {r['other']:>6.0f}  {r['weight GEMVs'] / r['step_us']:>9.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu_kind(), "threads": args.threads, "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
