"""FlashLM's exporter: checkpoint -> validated ONNX graphs (fp32, int8) with the manifest the runtime reads.

It stands on the core (`flashlm_core`), the training core (`flashlm`, to load and compare with torch)
and the runtime (`flashlm_runtime`, to validate the graphs as users will run them); nothing imports it.
"""
