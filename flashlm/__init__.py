"""FlashLM: train a tiny language model on a CPU, export it to ONNX, run it with onnxruntime."""

__version__ = "0.1.0"
