"""Training step time on an idle and on a busy CPU, by OpenMP wait setting and thread count.

    python bench/train_busy.py [--steps 4] [--data data/tinystories-plus] [--json FILE]

Each cell runs in a fresh process (libgomp reads OMP_WAIT_POLICY once, when torch loads), with the
`flashlm-train` default step (16 x 256 tokens, precision chosen from this CPU). "busy" starts
--loops-per-core CPU-bound busy loops per core beside it, as a laptop running other work would; the loops
stop when the cell ends (and after 10 minutes in any case). Reports the median step time of each cell after one warm-up step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from busy import busy_loops  # noqa: E402
from provenance import provenance  # noqa: E402


def worker(args) -> None:
    """One cell: time `args.steps` default optimizer steps after a warm-up; print the times as JSON."""
    import numpy as np
    import torch

    from flashlm.fsp import Objective
    from flashlm.model import FlashLMModel
    from flashlm.recipes import recipe_config
    from flashlm.train import batch_starts, make_optimizer, optimizer_step, resolve_kernels
    from flashlm_core.config import ModelConfig

    torch.set_num_threads(args.threads)
    tokens = np.fromfile(Path(args.data) / "train.bin", dtype=np.uint16)
    tc, _ = resolve_kernels(recipe_config("default", max_steps=10**6))
    torch.manual_seed(0)
    model = FlashLMModel(ModelConfig(), dropout=tc.dropout, attention=tc.attention).train()
    opt = make_optimizer(model, tc)
    objective = Objective(model, tc)
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        optimizer_step(objective, model, opt, tokens, batch_starts(i, seed=0, rank=0, n_tokens=len(tokens), tc=tc), tc, lr=tc.lr)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times[1:], "bf16": tc.bf16}))


# The OpenMP settings compared: libgomp's default (spin ~300k iterations, then sleep), sleep at once, a short spin.
POLICIES = {"default": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"}}


def cell(args, *, policy: str, threads: int, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    n_loops = args.loops_per_core * (os.cpu_count() or 1) if busy else 0
    with busy_loops(n_loops):
        out = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps),
                              "--data", args.data], env=env, capture_output=True, text=True, timeout=1800, check=True)
    times = json.loads(out.stdout.strip().splitlines()[-1])["times"]
    return {"policy": policy, "threads": threads, "load": f"busy x{n_loops}" if busy else "idle",
            "median_s": statistics.median(times), "times": times}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--data", default="data/tinystories-plus")
    ap.add_argument("--loops-per-core", type=int, default=2, help="busy loops per core in the busy cells (2: load ~5 on 2 cores with training)")
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="write the cells here")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from flashlm_core.cpu import cpu_kind

    cells = []
    for busy in (False, True):
        for policy in POLICIES:
            for threads in (1, 2):
                cells.append(cell(args, policy=policy, threads=threads, busy=busy))
                c = cells[-1]
                print(f"{c['load']:<8} {c['policy']:<21} threads={threads}: {c['median_s']:.2f} s a step", flush=True)
    print(f"CPU {cpu_kind()}; {os.cpu_count()} cores; default step 16 x 256 tokens; median of {args.steps} steps")
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(), "steps": args.steps, "cells": cells}, indent=2) + "\n")


if __name__ == "__main__":
    main()
