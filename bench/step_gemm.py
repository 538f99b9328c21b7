"""The fp32 training step's GEMMs on this CPU, BLAS against BLAS, and the whole step with each (--gemm torch|numpy).

    python bench/step_gemm.py [--threads 2] [--repeats 15] [--steps 7] [--json results/avx2/step_gemm_NAME.json]

1. Every GEMM of one optimizer step, at its own shape (the short-run recipe's micro-batch of 8 x 256 rows and the
   default's 4 x 256; the head's chunks of CHUNK_ROWS rows), timed through torch (its MKL sgemm), numpy (its OpenBLAS)
   and oneDNN (torch.ops.mkldnn._linear_pointwise, forward shapes), interleaved; median GFLOP/s of each.
2. The machine's fp32 GEMM roof: a 2048^3 matmul through each.
3. The whole optimizer step with flashlm-train's --gemm torch and --gemm numpy, interleaved on the same batches, for
   the short-run recipe (with and without FSP: what FSP costs) and the default: median tokens/s and the step's
   achieved GFLOP/s against the roof.
Nothing else may run meanwhile (one multi-threaded job at a time).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402
from train_speed import step_flops_per_token  # noqa: E402

from flashlm import blas, probe  # noqa: E402
from flashlm.head_loss import CHUNK_ROWS  # noqa: E402
from flashlm.recipes import recipe_config, short_run_config  # noqa: E402
from flashlm.train import resolve_kernels  # noqa: E402
from flashlm_core.config import ModelConfig  # noqa: E402


def step_shapes(cfg: ModelConfig, rows: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of each GEMM a training micro-batch of `rows` token rows runs: forward, input grad, weight grad."""
    shapes = {}
    for name, k, n in (("qkv", cfg.dim, 3 * cfg.dim), ("out", cfg.dim, cfg.dim), ("gate_up", cfg.dim, 2 * cfg.d_ff), ("down", cfg.d_ff, cfg.dim)):
        shapes[f"{name} fwd"] = (rows, k, n)
        shapes[f"{name} dx"] = (rows, n, k)
        shapes[f"{name} dw"] = (n, rows, k)
    shapes["head logits"] = (CHUNK_ROWS, cfg.dim, cfg.vocab_size)
    shapes["head dh"] = (CHUNK_ROWS, cfg.vocab_size, cfg.dim)
    shapes["head dw"] = (cfg.vocab_size, CHUNK_ROWS, cfg.dim)
    return shapes


def time_gemms(m: int, k: int, n: int, repeats: int) -> dict[str, float]:
    """Median GFLOP/s of (m, k) @ (k, n) through each BLAS, interleaved."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    w = b.T.contiguous()  # (n, k): a linear layer's weight, for oneDNN's linear
    out = np.empty((m, n), np.float32)
    calls = {"torch": lambda: torch.mm(a, b), "numpy": lambda: np.matmul(a.numpy(), b.numpy(), out=out)}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        calls["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
    times = {name: [] for name in calls}
    for _ in range(repeats + 1):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: 2 * m * k * n / statistics.median(t[1:]) / 1e9 for name, t in times.items()}


def time_steps(tc, steps: int) -> dict[str, float]:
    """Median tokens/s of the optimizer step with each --gemm, interleaved over the same batches (the probe's own timing)."""
    tc, _ = resolve_kernels(tc)
    return probe.tokens_per_second(ModelConfig(), tc, gemms=("torch", "numpy"), steps=steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    blas.set_threads(args.threads)
    cfg = ModelConfig()
    record = {**provenance(packages=("torch", "numpy")), "threads": args.threads, "blas": blas.describe()}
    print(f"{record['cpu']}; flags {', '.join(record['cpu_flags'])}; {args.threads} threads; torch {record['torch']}, numpy {record['numpy']} "
          f"({record['blas']})")
    record["roof_gflops"] = roof = time_gemms(2048, 2048, 2048, 5)
    print("2048^3 roof GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in roof.items()))
    record["shapes"] = {}
    for label, rows in (("short run, micro-batch 8 x 256", 8 * 256), ("default, micro-batch 4 x 256", 4 * 256)):
        print(f"\n{label}: GFLOP/s per GEMM")
        for name, (m, k, n) in step_shapes(cfg, rows).items():
            if rows != 8 * 256 and name.startswith("head"):
                continue  # the head's chunks do not depend on the micro-batch
            got = time_gemms(m, k, n, args.repeats)
            record["shapes"][f"{rows} {name}"] = {"m": m, "k": k, "n": n, **got}
            print(f"  {name:<14} ({m:>4} x {k:>4}) @ ({k:>4} x {n:>4})  " + "  ".join(f"{b} {v:6.1f}" for b, v in got.items()))
    record["steps"] = {}
    short = short_run_config(recipe_config("default", max_steps=10**6))
    variants = {"short run": short, "short run without FSP (--fsp-alpha 0)": dataclasses.replace(short, fsp_alpha=0.0),
                "default": recipe_config("default", max_steps=10**6)}
    for label, tc in variants.items():
        got = time_steps(tc, args.steps)
        flops = step_flops_per_token(cfg, tc.seq_len)
        record["steps"][label] = {"tok_s": got, "gflops": {g: flops * v / 1e9 for g, v in got.items()}}
        print(f"\n{label} step: " + ", ".join(f"--gemm {g} {v:,.0f} tok/s = {flops * v / 1e9:.0f} GFLOP/s" for g, v in got.items())
              + f"; numpy / torch {got['numpy'] / got['torch']:.2f}x; roof {max(roof.values()):.0f} GFLOP/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
