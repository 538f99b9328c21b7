"""FlashLM's training core (torch): model, FSP loss, data preparation, training loop, checkpoints, eval.

It stands on the torch-free core (`flashlm_core`); the exporter stands on it; the runtime never imports it.
"""

__version__ = "0.1.0"
