"""Training tok/s: flashlm-train's optimizer step vs the seed's own script, interleaved in one run.

    python bench/train_speed.py [--steps 7] [--threads 2] [--data data/tinystories] [--seed-script PATH]

The baseline is the seed's real code: its GPT_FSP class, imported from ../shared/seed/train_v10_fsp.py,
run through the optimizer step its training loop does (8 micro-batches of 4 x 256, (ce + 0.1 fsp).backward(),
clip, AdamW, LR scheduler). bench/seed_reference.py (our re-implementation) is timed beside it as a check.
Every variant but the shipped default and its one-micro-batch form (16 x 256) runs 32 x 256 tokens per optimizer step; steps are interleaved
round-robin so machine noise hits all variants alike; the first step of each is warm-up (and compilation) and is dropped.
The default row is what a long flashlm-train run does here: torch.compile'd in bf16 where a C++ compiler exists
(flashlm.compiled.choose_compile); every other flashlm row runs eagerly (--no-compile) but "--compile" (fp32 runs).
Reports median tok/s and the ratio to the seed's script. The allocator is the process's: run it under
LD_PRELOAD=libtcmalloc_minimal.so.4 to see what flashlm-train gets (it preloads tcmalloc), and without.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_reference import SeedModel, seed_step  # noqa: E402

from flashlm.compiled import choose_compile, compile_step  # noqa: E402
from flashlm.fsp import Objective  # noqa: E402
from flashlm.model import FlashLMModel  # noqa: E402
from flashlm.precision import choose_bf16  # noqa: E402
from flashlm.recipes import SHORT_RUN, recipe_config  # noqa: E402
from flashlm.train import batch_starts, make_batch, make_optimizer, optimizer_step, resolve_kernels  # noqa: E402
from flashlm_core import artifacts as A  # noqa: E402
from flashlm_core.config import ModelConfig  # noqa: E402
from flashlm_core.cpu import cpu_kind  # noqa: E402

DEFAULT_ROW = "flashlm default (dropout 0.1 on embedding + residual; 4 x 4 x 256 a step; compiled as flashlm-train decides)"


def load_tokens(data: str | None) -> np.ndarray:
    if data and (Path(data) / "train.bin").is_file():
        return np.fromfile(Path(data) / "train.bin", dtype=np.uint16)
    return np.random.default_rng(0).integers(0, 4096, 1_000_000).astype(np.uint16)


def flashlm_variant(tokens, recipe="default", *, compile=False, **overrides):
    """One flashlm-train optimizer step, eager unless compile is True or None (then as a long run decides here)."""
    tc = recipe_config(recipe, max_steps=10**6, compile=compile, **overrides)
    tc, _ = resolve_kernels(tc)  # what flashlm-train would pick on this CPU
    model = FlashLMModel(ModelConfig(), dropout=tc.dropout, attn_dropout=tc.attn_dropout, attention=tc.attention).train()
    opt = make_optimizer(model, tc)
    step_fn = Objective(model, tc)
    if choose_compile(tc)[0]:
        step_fn = compile_step(step_fn)
    counter = iter(range(10**9))

    def step():
        starts = batch_starts(next(counter), seed=0, rank=0, n_tokens=len(tokens), tc=tc)
        optimizer_step(step_fn, model, opt, tokens, starts, tc, lr=tc.lr)

    return step, tc.tokens_per_step


def seed_script_variant(tokens, script: Path):
    """The seed's own GPT_FSP and the optimizer step of its training loop (train_v10_fsp.py, lines 280-303)."""
    spec = importlib.util.spec_from_file_location("seed_script", script)
    ref = importlib.util.module_from_spec(spec)
    threads = torch.get_num_threads()
    spec.loader.exec_module(ref)  # it sets 4 threads at import
    torch.set_num_threads(threads)
    model = ref.GPT_FSP(4096, ref.D, ref.D_FF, ref.N_HEADS, ref.N_LAYERS).train()
    opt = torch.optim.AdamW(model.parameters(), lr=ref.LR, weight_decay=ref.WD, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    rng = np.random.default_rng(0)

    def step():
        opt.zero_grad()
        for s in rng.integers(0, len(tokens) - 257, size=(ref.GRAD_ACC, ref.BATCH)):
            xb, yb = (t.contiguous() for t in make_batch(tokens, s, ref.SEQ_LEN))  # as its DataLoader gives them
            ce, fsp = model(xb, yb)
            (ce + ref.FSP_ALPHA * fsp).backward()
            ce.item(), fsp.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ref.CLIP)
        opt.step()
        sched.step()

    return step, ref.GRAD_ACC * ref.BATCH * ref.SEQ_LEN


def seed_variant(tokens):
    model = SeedModel().train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)

    def step():
        starts = rng.integers(0, len(tokens) - 257, size=(8, 4))
        seed_step(model, opt, [make_batch(tokens, s, 256) for s in starts])

    return step, 8 * 4 * 256


def step_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Matmul FLOPs of one training token, forward + backward (3x forward): the projections, the tied head,
    and the attention scores and mixing over the full T x T square (the manual path computes all of it)."""
    per_layer = 2 * cfg.dim * (3 * cfg.dim + cfg.dim + 2 * cfg.d_ff) + 2 * cfg.d_ff * cfg.dim + 2 * 2 * seq_len * cfg.dim
    return 3 * (cfg.n_layers * per_layer + 2 * cfg.dim * cfg.vocab_size)


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large square matmul in `dtype` at the current thread count: the machine's GEMM roof."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


GEMM_OPS = ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def gemm_seconds(step, steps: int = 3) -> tuple[float, float]:
    """(seconds a step spends in matmul kernels (attention's flash kernel included), seconds a step) under
    torch.profiler: what the step would take if everything but its GEMMs cost nothing."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    gemm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e6 / steps
    return gemm, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=7, help="measured steps per variant (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=A.DATA_DIR)
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="time the bf16 rows (default: only where the CPU has native bf16, as flashlm-train decides); "
                         "--no-bf16 times what a CPU without it runs: fp32 defaults, no bf16 rows")
    ap.add_argument("--seed-script", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "seed" / "train_v10_fsp.py",
                    help="the seed's train_v10_fsp.py")
    args = ap.parse_args()
    args.no_bf16 = not choose_bf16(args.bf16)[0]  # emulated bf16 would take tens of minutes and time nothing real
    if not args.seed_script.is_file():
        ap.error(f"the seed's script is not at {args.seed_script}; pass --seed-script PATH")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = load_tokens(args.data)
    # On --no-bf16 (timing what a CPU without native bf16 runs, e.g. under an AVX2 cap) the default rows run fp32
    # and the rows that force bf16 (round1) are left out.
    auto = {"bf16": False} if args.no_bf16 else {}
    variants = {
        "seed's script (train_v10_fsp.py GPT_FSP + its step: fp32, 4x8)": seed_script_variant(tokens, args.seed_script),
        "seed formulation re-implemented (bench/seed_reference.py)": seed_variant(tokens),
        "flashlm --recipe seed": flashlm_variant(tokens, "seed"),
        # the other variants run 32 x 256 tokens a step (grad_accum 8) so that the rows compare per step
        DEFAULT_ROW: flashlm_variant(tokens, compile=None, **auto),
        "flashlm default --no-compile (eager)": flashlm_variant(tokens, **auto),
        "flashlm default as one 16 x 256 micro-batch (--micro-batch 16 --grad-accum 1)": flashlm_variant(tokens, micro_batch=16, grad_accum=1, **auto),
        "flashlm short run (recipes.SHORT_RUN: no dropout, one 16 x 256 micro-batch)": flashlm_variant(tokens, **SHORT_RUN, **auto),
        "flashlm short run as 4 micro-batches of 4 x 256": flashlm_variant(tokens, **{**SHORT_RUN, "micro_batch": 4, "grad_accum": 4}, **auto),
        "flashlm short run at 8 x 256 a step (--micro-batch 8)": flashlm_variant(tokens, **{**SHORT_RUN, "micro_batch": 8}, **auto),
        "flashlm short run at 32 x 256 a step (--micro-batch 32)": flashlm_variant(tokens, **{**SHORT_RUN, "micro_batch": 32}, **auto),
        "flashlm default at 32 x 256 a step": flashlm_variant(tokens, grad_accum=8, **auto),
        "flashlm default --attn-dropout 0.1": flashlm_variant(tokens, grad_accum=8, attn_dropout=0.1, **auto),
        "flashlm default --no-bf16 (fp32; attention auto = sdpa)": flashlm_variant(tokens, grad_accum=8, bf16=False),
        "flashlm default --no-bf16 --attention manual": flashlm_variant(tokens, grad_accum=8, bf16=False, attention="manual"),
        "flashlm --recipe round1 --no-bf16 (fp32, no dropout)": flashlm_variant(tokens, "round1", bf16=False),
    }
    if args.no_bf16:  # flashlm-train does not compile an fp32 run by default (it measured no faster): the forced row
        variants["flashlm default --compile"] = flashlm_variant(tokens, compile=True, **auto)
    else:
        variants["flashlm --recipe round1 (bf16, no dropout)"] = flashlm_variant(tokens, "round1")
        variants["flashlm --recipe round1 --attention sdpa"] = flashlm_variant(tokens, "round1", attention="sdpa")
    times = {name: [] for name in variants}
    for step, _ in variants.values():  # warm-up (and compile) outside the measurement
        step()
    for _ in range(args.steps):
        for name, (step, _) in variants.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    base_name = next(iter(variants))
    base = variants[base_name][1] / statistics.median(times[base_name])
    preload = os.environ.get("LD_PRELOAD", "") or "none (system malloc)"
    print(f"CPU {cpu_kind()}; threads={args.threads} steps={args.steps} (median), torch {torch.__version__}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; LD_PRELOAD={preload}")
    print(f"{'variant':<72} {'tok/s':>8} {'x seed':>7}")
    results = []
    for name, (_, tokens_per_step) in variants.items():
        tok_s = tokens_per_step / statistics.median(times[name])
        results.append({"variant": name, "tok_s": tok_s, "ratio": tok_s / base, "step_seconds": times[name]})
        print(f"{name:<72} {tok_s:>8,.0f} {tok_s / base:>6.2f}x")
    flops = step_flops_per_token(ModelConfig(), 256)
    roof = {"fp32": gemm_peak(torch.float32)} if args.no_bf16 else {"bf16": gemm_peak(torch.bfloat16), "fp32": gemm_peak(torch.float32)}
    default = results[list(variants).index(DEFAULT_ROW)]
    achieved = default["tok_s"] * flops / 1e9
    # each matmul op's self time as the calling thread sees it: the work of its intra-op threads happens inside it
    gemm, wall = gemm_seconds(variants[DEFAULT_ROW][0])
    seed_step = statistics.median(times[base_name]) * variants[DEFAULT_ROW][1] / variants[base_name][1]
    print(f"the default step's matmul kernels: {gemm * 1e3:.0f} of {wall * 1e3:.0f} ms a step under the profiler ({gemm / wall:.0%}); "
          f"with nothing else costing anything it would run {seed_step / gemm:.2f}x the seed's script")
    print(f"bound: the default step does {flops / 1e6:.1f} MFLOP a token = {achieved:.0f} GFLOP/s; a 2048^3 GEMM here runs "
          + ", ".join(f"{v:.0f} GFLOP/s in {k}" for k, v in roof.items()) + f" ({args.threads} threads)")
    if args.json:
        from provenance import provenance

        Path(args.json).write_text(json.dumps({**provenance(), "threads": args.threads,
                                               "ld_preload": preload, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                               "variants": results, "flops_per_token": flops, "default_gflops": achieved,
                                               "gemm_peak_gflops": roof, "default_step_gemm_seconds": gemm,
                                               "default_step_profiled_seconds": wall, "gemm_only_ratio": seed_step / gemm}, indent=2))


if __name__ == "__main__":
    main()
