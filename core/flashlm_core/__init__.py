"""The torch-free core every FlashLM package stands on: ModelConfig, errors, the artifact layout and ONNX IO
names, versioned JSON, hashing, atomic writes, bits per byte, generation policy and CLI helpers.

Stdlib only (plus numpy in `bpb` and click in `clikit`, both runtime dependencies): the runtime imports
this package and nothing of `flashlm` (torch), which the no-torch test checks.
"""
