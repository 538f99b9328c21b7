"""One optimizer step's gradient as 4 x 4 micro-batches and as one of 16 (and 16 of 1), against fp32.

    python bench/micro_batch_grads.py [--checkpoint runs/default-model/best] [--data data/tinystories-plus]

The default step's 16 windows (batch_starts of step 5, seed 2), dropout off so that only the micro-batch layout
differs; bf16 autocast as flashlm-train runs it on a CPU with native bf16. Prints each layout's relative error
and cosine against the fp32 gradient of the 4 x 4 layout, and the fp32 layouts against each other: whether
splitting the batch changes the gradient beyond rounding.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from flashlm.fsp import Objective
from flashlm.model import FlashLMModel
from flashlm.recipes import recipe_config
from flashlm.train import batch_starts, make_batch, resolve_kernels
from flashlm_core.config import ModelConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/default-model/best", help="weights to take the gradient at (else a fresh init)")
    ap.add_argument("--data", default="data/tinystories-plus")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tokens = np.fromfile(Path(args.data) / "train.bin", dtype=np.uint16)
    tc, _ = resolve_kernels(recipe_config("default", max_steps=10, dropout=0.0))
    torch.manual_seed(0)
    model = FlashLMModel(ModelConfig(), attention=tc.attention).train()
    weights = Path(args.checkpoint) / "model.safetensors"
    if weights.is_file():
        model.load_state_dict(load_file(str(weights)), strict=False)
    starts = batch_starts(5, seed=2, rank=0, n_tokens=len(tokens), tc=tc).reshape(-1)  # (16,)
    objective = Objective(model, tc)

    def gradient(micro: int, bf16: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        for i in range(0, len(starts), micro):
            x, y = make_batch(tokens, starts[i : i + micro], tc.seq_len)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _, _ = objective(x, y)
            (loss * micro / len(starts)).backward()  # the mean over the step's 16 windows
        return torch.cat([p.grad.flatten().double() for p in model.parameters()])

    ref = gradient(4, False)
    print(f"weights: {weights if weights.is_file() else 'fresh init'}; 16 windows, dropout off")
    for micro in (4, 16, 1):
        g = gradient(micro, True)
        cos = float(torch.nn.functional.cosine_similarity(g, ref, dim=0))
        print(f"bf16, {16 // micro} x {micro}: relative error vs fp32 4 x 4 {float((g - ref).norm() / ref.norm()):.4%}, cosine {cos:.6f}")
    print(f"fp32, 1 x 16 vs 4 x 4: relative difference {float((gradient(16, False) - ref).norm() / ref.norm()):.2e}")


if __name__ == "__main__":
    main()
