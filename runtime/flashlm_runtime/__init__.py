"""FlashLM runtime: run an exported FlashLM with onnxruntime, numpy and tokenizers only (never torch).

It stands on the torch-free core (`flashlm_core`) alone.

Names are imported on first use, so `flashlm-run` starts (and answers Ctrl-C) before onnxruntime loads.
"""

__all__ = ["FlashLM", "Generation", "Piece", "Score", "SamplingParams"]


def __getattr__(name: str):
    if name in ("FlashLM", "Generation", "Piece", "Score"):
        from flashlm_runtime import lm

        return getattr(lm, name)
    if name == "SamplingParams":
        from flashlm_runtime.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'flashlm_runtime' has no attribute {name!r}")
