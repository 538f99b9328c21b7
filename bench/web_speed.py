"""Decode tok/s of the web page (onnxruntime-web WASM in headless Chromium) next to the Python runtime, same model,
same run; saves the page's screenshot for the README.

    python bench/web_speed.py [--model EXPORT_DIR] [--repeats 5] [--tokens 200] [--json results/web/speed.json]
                              [--screenshot results/web/page.png]

Each repeat: the page generates --tokens greedy tokens from "Once upon a time" with 1 and with 2 WASM threads,
then FlashLM does the same with 1 and 2 onnxruntime threads; medians. Both count decode time only (after the
prompt's prefill), sampling and detokenisation included (the page decodes the whole text after every token).
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
from node_clients import PORTABLE_MODEL_DIR  # noqa: E402
from test_web import drive, serve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

PROMPT = "Once upon a time"


def decode_rate(lm: FlashLM, tokens: int) -> float:
    """Tokens a second after the first one (the prompt's prefill excluded), as the page counts."""
    first = n = None
    for piece in lm.stream(PROMPT, temperature=0, max_new_tokens=tokens):
        if piece.token_id >= 0:
            n = 0 if first is None else n + 1
            first = first or time.perf_counter()
    return n / (time.perf_counter() - first)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(PORTABLE_MODEL_DIR))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--screenshot", default=None)
    args = ap.parse_args()
    proc, url = serve(args.model)
    try:
        lms = {t: FlashLM(args.model, threads=t) for t in (1, 2)}
        rates = {k: [] for k in ("page, 1 thread", "page, 2 threads", "python, 1 thread", "python, 2 threads")}
        for lm in lms.values():
            lm.generate(PROMPT, temperature=0, max_new_tokens=args.tokens, stop_at_eos=False)  # warm-up
        for _ in range(args.repeats):
            # the page stops at end-of-text; greedy from this prompt runs past --tokens here (checked below)
            out = drive({"url": url, "runs": [{"query": f"prompt=Once%20upon%20a%20time&temperature=0&max={args.tokens}&threads={t}"} for t in (1, 2)]})
            for t, r in zip((1, 2), out["results"]):
                if "error" in r:
                    raise SystemExit(f"page error: {r['error']}")
                rates[f"page, {t} thread{'s' if t > 1 else ''}"].append(r["tok_s"])
            for t, lm in lms.items():
                rates[f"python, {t} thread{'s' if t > 1 else ''}"].append(decode_rate(lm, args.tokens))
        if args.screenshot:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            drive({"url": url, "screenshot": {"query": "prompt=Once%20upon%20a%20time&max=160&seed=3", "path": str(Path(args.screenshot).resolve())}})
    finally:
        proc.terminate()
    cpu = cpu_kind()
    print(f"CPU {cpu}; greedy from {PROMPT!r}, up to {args.tokens} tokens, median of {args.repeats} interleaved repeats")
    for name, xs in rates.items():
        print(f"{name:<20} {statistics.median(xs):>8,.0f} tok/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu, "model": args.model, "tokens": args.tokens, "time": time.strftime("%F %T"),
                                               "median_tok_s": {k: statistics.median(v) for k, v in rates.items()}, "runs": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()
