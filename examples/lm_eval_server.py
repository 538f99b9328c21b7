"""Score the served model with lm-evaluation-harness's `local-completions` model, through flashlm-serve's
/v1/completions (echo + logprobs), on a small local task: which of two sentences continues a TinyStories story.

    pip install "lm-eval[api,hf]==0.4.13"   # pulls torch and transformers: not part of FlashLM's own set-up
    python examples/lm_eval_server.py [--data ../shared/data/tinystories/valid.txt] [--stories 200]

The task (built here, nothing from a hub): for each of the first --stories validation stories with at least four
sentences, the context is its first sentences (at most ~150 tokens) and the choices are its true next sentence and
the next sentence of another story, in a random order. A model that follows a story picks the true one more often
than the 50 % of chance. lm-eval runs it as a multiple-choice task: the log-likelihood of each choice after the
context, read from the server's echoed logprobs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from flashlm_core import artifacts as A

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "models" / "flashlm-v10-fsp-onnx"  # the bundled model's tokenizer with its HF sidecars


def build_task(valid: Path, out: Path, stories: int, seed: int = 0) -> Path:
    """story_endings.jsonl and its task yaml in `out`; returns the yaml's folder (lm-eval's --include_path)."""
    texts = [s.strip() for s in valid.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    items = []
    for text in texts:
        sentences = re.findall(r"[^.!?]+[.!?]+[\"']?", text.replace("\n", " "))
        sentences = [s.strip() for s in sentences if s.strip()]
        if len(sentences) < 4:
            continue
        k = min(len(sentences) - 1, 4)
        items.append((" ".join(sentences[:k]), sentences[k]))
        if len(items) == stories:
            break
    rng = random.Random(seed)
    rows = []
    for i, (context, true_next) in enumerate(items):
        other = items[(i + 1 + rng.randrange(len(items) - 1)) % len(items)][1]
        label = rng.randrange(2)
        choices = [other, true_next] if label else [true_next, other]
        rows.append({"context": context, "choices": choices, "label": label})
    data = out / "story_endings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "story_endings.yaml").write_text(
        "task: flashlm_story_endings\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinystories" / "valid.txt"))
    ap.add_argument("--stories", type=int, default=200)
    ap.add_argument("--out", default=None, help="Folder for the task files and lm-eval's results (default: a temp folder).")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="flashlm-lm-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    include = build_task(Path(args.data), out, args.stories)
    server = subprocess.Popen([str(Path(sys.executable).parent / "flashlm-serve"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://\S+/v1)", server.stdout.readline()).group(1)
        model_args = (f"model={A.MODEL_NAME},base_url={url}/completions,tokenizer_backend=huggingface,tokenizer={TOKENIZER_DIR},"
                      "max_length=256,tokenized_requests=True,num_concurrent=4")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args, "--tasks",
               "flashlm_story_endings", "--include_path", str(include), "--output_path", str(out / "results")]
        print("$", " ".join(cmd), flush=True)
        sys.exit(subprocess.run(cmd, env=env).returncode)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
