"""A FlashLM export in Hugging Face optimum (ORTModelForCausalLM): generate, and compare greedy ids with flashlm_runtime.

    pip install torch==2.13.0 "optimum-onnx[onnxruntime]"      # optimum pulls transformers (and needs torch)
    python examples/optimum_generate.py [EXPORT_DIR]            # default: the bundled model

optimum finds the graph by base name inside a subfolder (file_name="onnx/model_quantized.onnx" is not found;
subfolder="onnx" is), and its generate() passes only the tokenizer outputs tokenizer_config.json names
(input_ids, attention_mask: the graph has no token_type_ids).
"""
from __future__ import annotations

import sys
from pathlib import Path

from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

from flashlm_core.generation import SAMPLE_PROMPTS
from flashlm_runtime import FlashLM

PORTABLE_MODEL = Path(__file__).resolve().parents[1] / "models" / "flashlm-v10-fsp-onnx"  # plain ops: what optimum runs


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else str(PORTABLE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = ORTModelForCausalLM.from_pretrained(folder, subfolder="onnx", file_name="model_quantized.onnx", local_files_only=True)
    lm = FlashLM(folder)
    for prompt in SAMPLE_PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        n = inputs["input_ids"].shape[1]
        greedy = model.generate(**inputs, max_new_tokens=40, do_sample=False)[0, n:].tolist()
        greedy = greedy[: greedy.index(lm.eot_id)] if lm.eot_id in greedy else greedy
        ours = lm.generate(prompt, temperature=0, max_new_tokens=40).token_ids
        print(f"{prompt!r}: optimum greedy ids {'==' if greedy == ours else '!='} flashlm_runtime's ({len(ours)} tokens)")
        print("   ", tokenizer.decode(greedy))
    sampled = model.generate(**tokenizer("Once upon a time", return_tensors="pt"), do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=60)
    print("sampled:", tokenizer.decode(sampled[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
