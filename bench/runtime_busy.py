"""Decode speed of flashlm-run's engine on an idle and on a busy CPU, by thread count.

    python bench/runtime_busy.py [--model EXPORT_DIR] [--repeats 5] [--json FILE]

Cells: 1 thread; threads=2 as FlashLM takes it (a ceiling: only cores that other work leaves free get a
thread); and 2 threads forced (what the runtime did before). "busy" starts one CPU-bound busy loop per core
before the models are loaded and stops them after the cell (after 10 minutes in any case). Each repeat
generates 200 greedy tokens from "Once upon a time" (prefill, sampling and detokenisation included); the
cells are interleaved and the median tok/s reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from busy import busy_loops  # noqa: E402
from provenance import provenance  # noqa: E402

import flashlm_runtime.lm as lm_module  # noqa: E402
from flashlm_runtime import FlashLM  # noqa: E402


def cells(model, repeats: int) -> dict:
    """tok/s medians of the three thread settings, interleaved; also the threads each one used."""
    real = lm_module.free_cores
    lms = {"1 thread": FlashLM(model, threads=1), "threads=2 (ceiling)": FlashLM(model, threads=2)}
    lm_module.free_cores = lambda cores, busy: cores  # the runtime before the ceiling: always 2
    try:
        lms["2 threads forced"] = FlashLM(model, threads=2)
    finally:
        lm_module.free_cores = real
    rates = {name: [] for name in lms}
    for _ in range(repeats):
        for name, lm in lms.items():
            t0 = time.perf_counter()
            g = lm.generate("Once upon a time", max_new_tokens=200, temperature=0, stop_at_eos=False)
            rates[name].append(len(g.token_ids) / (time.perf_counter() - t0))
    return {name: {"tok_s": statistics.median(r), "threads_used": lms[name].threads, "runs": r} for name, r in rates.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="export folder (default: the bundled model)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = {}
    for load in ("idle", "busy"):
        with busy_loops((os.cpu_count() or 1) if load == "busy" else 0) as loops:
            time.sleep(0.5 if loops else 0)  # let the loops start
            results[load] = cells(args.model, args.repeats)
        for name, c in results[load].items():
            print(f"{load:<5} {name:<22} uses {c['threads_used']} thread(s): {c['tok_s']:>7,.0f} tok/s", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?") \
        if Path("/proc/cpuinfo").is_file() else "?"
    print(f"CPU {cpu}; {os.cpu_count()} cores; 200 greedy tokens, median of {args.repeats}")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu, "cells": results}, indent=2))


if __name__ == "__main__":
    main()
