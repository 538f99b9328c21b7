"""Decode speed on the same weights: flashlm's runtime (int8 ONNX) vs llama.cpp (GGUF, through node-llama-cpp).

    python bench/llama_cpp_speed.py --model EXPORT_DIR --gguf FILE.gguf [--threads 1 2] [--tokens 200] [--repeats 7]

Each repeat, for each thread count, times prefill of "Once upon a time" + greedy decode of --tokens tokens
(no stop at end-of-text) on both sides, interleaved so machine noise hits both alike; model loading is outside
the timing on both sides. llama.cpp's time is measured in Node around node-llama-cpp's sequence.evaluate loop
(its JavaScript wrapper included, as a Node user gets it), and llama.cpp's own eval time a token is read from
its timing report (llama_perf_context_print, decode steps only: the C++ floor); flashlm's in Python around
FlashLM.generate (sampling and detokenisation included). Medians in tokens per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from flashlm_core.cpu import cpu_kind  # noqa: E402
from flashlm_runtime import FlashLM  # noqa: E402
from node_clients import run_node  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

PROMPT = "Once upon a time"


def llama_cpp_run(gguf: str, prompt_ids: list[int], tokens: int, threads: int) -> tuple[float, float, list[int]]:
    """(seconds of prefill + decode through node-llama-cpp, llama.cpp's own eval seconds a token, greedy ids)."""
    req = {"model": gguf, "threads": threads, "greedy": {"prompts": [prompt_ids], "tokens": tokens},  # greedy first: the warm-up
           "timing": {"prompt": prompt_ids, "tokens": tokens, "repeats": 1}}
    out = run_node("llama_cpp/check.mjs", req, package="node-llama-cpp")
    if "ms" not in out["eval"]:
        raise SystemExit(f"llama.cpp printed no eval timing: {out['eval']}")
    return out["timing"][0], out["eval"]["ms"] / 1e3 / out["eval"]["runs"], out["greedy"][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="ONNX export folder (its int8 graph is timed)")
    ap.add_argument("--gguf", required=True, help="the same checkpoint as .gguf (q8_0 for the int8 comparison)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    lms = {t: FlashLM(args.model, threads=t) for t in args.threads}
    prompt_ids = lms[args.threads[0]].encode(PROMPT)
    times = {(side, t): [] for t in args.threads for side in ("flashlm", "llama.cpp", "llama.cpp eval")}
    same = {}
    for lm in lms.values():  # warm-up
        lm.generate(PROMPT, max_new_tokens=args.tokens, temperature=0, stop_at_eos=False)
    for _ in range(args.repeats):
        for t, lm in lms.items():
            t0 = time.perf_counter()
            g = lm.generate(PROMPT, max_new_tokens=args.tokens, temperature=0, stop_at_eos=False)
            times["flashlm", t].append(time.perf_counter() - t0)
            seconds, per_token, ids = llama_cpp_run(args.gguf, prompt_ids, args.tokens, t)
            times["llama.cpp", t].append(seconds)
            times["llama.cpp eval", t].append(per_token * args.tokens)
            # greedy ids can part at near-ties (int8 ONNX quantizes activations on the fly, Q8_0 does not)
            same[t] = next((i for i, (a, b) in enumerate(zip(g.token_ids, ids)) if a != b), len(ids))
    cpu = cpu_kind()
    print(f"CPU {cpu}; {args.tokens} greedy tokens after {PROMPT!r}, median of {args.repeats} interleaved repeats")
    print(f"{'threads':>7} {'flashlm int8 tok/s':>19} {'llama.cpp via Node':>19} {'llama.cpp eval only':>20} "
          f"{'flashlm / eval':>15} {'same greedy ids':>16}")
    rows = []
    for t in args.threads:
        a, b, c = (args.tokens / statistics.median(times[side, t]) for side in ("flashlm", "llama.cpp", "llama.cpp eval"))
        rows.append({"threads": t, "flashlm_tok_s": a, "llama_cpp_node_tok_s": b, "llama_cpp_eval_tok_s": c,
                     "flashlm_over_llama_cpp_eval": a / c, "same_greedy_prefix": same[t],
                     "seconds": {side: times[side, t] for side in ("flashlm", "llama.cpp", "llama.cpp eval")}})
        print(f"{t:>7} {a:>19,.0f} {b:>19,.0f} {c:>20,.0f} {a / c:>14.2f}x {same[t]:>9} of {args.tokens}")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu, "model": args.model, "gguf": args.gguf, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
