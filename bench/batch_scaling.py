"""What a decode step costs per row: end-to-end batch 1, 2, 4, 8 fitted as fixed + per-row time.

    python bench/batch_scaling.py [--model runtime/flashlm_runtime/default_model] [--repeats 5] [--json FILE]

Each batch size generates 200 tokens a row from "Once upon a time" (temperature 0.8, top-p 0.9, sampling and
detokenisation included) through generate_batch, int8, 1 intra-op thread; sizes are interleaved round-robin and
medians taken. A step of B rows takes t(B) = B / tok_s(B); the least-squares line t(B) = F + r * B splits it into
what every step pays once (F: weight GEMVs, per-node dispatch, the Python loop) and what each row adds (r: its
KV cache read by attention, its sampling and detokenisation, its share of the top outputs). Batch B gives
B * t(1) / t(B) the tokens per second of batch 1, so ">= 4x at batch 8" needs r <= F / 6: the line says how far
the per-row cost is from that. The time inside the decode loop's step() (the graph run and its input writes) is
fitted the same way, so F and r split into graph and Python (sampling, detokenisation, the generation loop).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from runtime_speed import e2e_tok_s  # the sibling benchmark (a script's folder is first on sys.path)

from flashlm_runtime import FlashLM, shared_kv
from flashlm_runtime.manifest import DEFAULT_MODEL_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402


class TimedSteps:
    """Adds up the wall time of every decode step() of the contrib decode loop while installed."""

    def __init__(self):
        self.seconds, self.steps = 0.0, 0
        self._step = shared_kv.SharedKVEngine.step

    def __enter__(self):
        def step(engine, tokens):
            t = time.perf_counter()
            out = self._step(engine, tokens)
            self.seconds += time.perf_counter() - t
            self.steps += 1
            return out

        shared_kv.SharedKVEngine.step = step
        return self

    def __exit__(self, *exc):
        shared_kv.SharedKVEngine.step = self._step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from flashlm_core.cpu import cpu_kind

    lm = FlashLM(args.model, int8=True, threads=1)
    if lm.ops != "contrib":
        raise SystemExit(f"{args.model} holds a {lm.ops} graph; this benchmark times the contrib decode loop")
    e2e_tok_s(lm, max(args.batches), 20, seed=0)  # warm-up: first-run allocations and page faults
    raw = {b: [] for b in args.batches}
    graph = {b: [] for b in args.batches}  # us a decode step inside step(), per generation
    for rep in range(args.repeats):
        for b in args.batches:
            with TimedSteps() as timed:
                raw[b].append(e2e_tok_s(lm, b, args.new_tokens, seed=rep))
            graph[b].append(1e6 * timed.seconds / timed.steps)
    tok_s = {b: statistics.median(v) for b, v in raw.items()}
    step_us = {b: 1e6 * b / tok_s[b] for b in args.batches}  # one decode step of b rows, end to end
    graph_us = {b: statistics.median(v) for b, v in graph.items()}
    r, F = np.polyfit(args.batches, [step_us[b] for b in args.batches], 1)
    r_g, F_g = np.polyfit(args.batches, [graph_us[b] for b in args.batches], 1)
    one = step_us.get(1, F + r)
    print(f"{cpu_kind()}; {args.model}, int8, 1 thread; medians of {args.repeats} interleaved repeats, {args.new_tokens} tokens a row")
    print(f"{'batch':>5} {'tok/s':>7} {'step':>8} {'fit':>8} {'in step()':>9} {'x batch 1':>9}")
    for b in args.batches:
        print(f"{b:>5} {tok_s[b]:>7,.0f} {step_us[b]:>6.0f}us {F + r * b:>6.0f}us {graph_us[b]:>7.0f}us {b * one / step_us[b]:>8.2f}x")
    print(f"fixed F = {F:.0f} us a step (step(): {F_g:.0f}, the rest: {F - F_g:.0f}); per row r = {r:.0f} us (step(): {r_g:.0f}, "
          f"the rest: {r - r_g:.0f}); batch 8 at >= 4x batch 1 needs r <= F / 6 = {F / 6:.0f} us")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu_kind(), "model": args.model, "threads": 1, "new_tokens": args.new_tokens,
                                               "tok_s": tok_s, "step_us": step_us, "in_step_us": graph_us, "fixed_us": F,
                                               "per_row_us": r, "fixed_in_step_us": F_g, "per_row_in_step_us": r_g}, indent=2))


if __name__ == "__main__":
    main()
