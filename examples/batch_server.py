"""Serve several prompts at once: one left-padded batch of the int8 graph (the bundled model ships int8 only).

With int8, a row can differ slightly from the same prompt run alone (activation scales are computed
per batch); with an fp32 export (`--fp32` bundles, int8=False) each row equals running it alone.
    python examples/batch_server.py [EXPORT_DIR]
"""
import sys

from flashlm_runtime import FlashLM

lm = FlashLM(sys.argv[1] if len(sys.argv) > 1 else None, threads=1)
prompts = ["Once upon a time", "A cat sat", "The little girl"]
for prompt, gen in zip(prompts, lm.generate_batch(prompts, seed=42, max_new_tokens=80)):
    print(f"--- {prompt!r} ({gen.finish_reason}, {gen.stats['tokens_per_second']:.0f} tok/s for the batch)")
    print(prompt + gen.text)
