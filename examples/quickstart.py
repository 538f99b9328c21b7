"""Ten lines: load an export, stream a story, read the FSP plan, score a sentence (no torch needed)."""
import sys

from flashlm_runtime import FlashLM

lm = FlashLM(sys.argv[1] if len(sys.argv) > 1 else None)  # an export folder, or the bundled default model
for piece in lm.stream("Once upon a time", seed=0, max_new_tokens=120):
    print(piece.text, end="", flush=True)
print("\nplan:", lm.plan("Once upon a time there was a dog", k=5))
print("ppl:", round(lm.score("The cat sat on the mat.").ppl, 2))
