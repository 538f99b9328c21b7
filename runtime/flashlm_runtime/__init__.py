"""FlashLM runtime: run an exported FlashLM with onnxruntime, numpy and tokenizers only (never torch)."""

from flashlm_runtime.lm import FlashLM, Generation, Piece, Score
from flashlm_runtime.sampling import SamplingParams

__all__ = ["FlashLM", "Generation", "Piece", "Score", "SamplingParams"]
