"""Serve several prompts at once: one left-padded batch, each row identical to running it alone (fp32)."""
import sys

from flashlm_runtime import FlashLM

lm = FlashLM(sys.argv[1] if len(sys.argv) > 1 else None, int8=False, threads=2)
prompts = ["Once upon a time", "A cat sat", "The little girl"]
for prompt, gen in zip(prompts, lm.generate_batch(prompts, seed=42, max_new_tokens=80)):
    print(f"--- {prompt!r} ({gen.finish_reason}, {gen.stats['tokens_per_second']:.0f} tok/s for the batch)")
    print(prompt + gen.text)
