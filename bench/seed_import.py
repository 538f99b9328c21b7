"""A checkpoint trained by the seed's own script, end to end through FlashLM: import, evaluate, export int8, run.

    python bench/seed_import.py --seed-run SEEDRUN [--corpus ../shared/data/tinystories] [--json results/import/seed_e2e.json]

SEEDRUN is a folder where ../shared/seed/README.md's commands ran train_v10_fsp.py (its fsp_best.pt beside the
script, its data in data_v10/). The steps, each the command a user would type:
1. flashlm-import SEEDRUN/fsp_best.pt --tokenizer SEEDRUN/data_v10/tokenizer.json --out WORK/imported
2. flashlm-prepare CORPUS --tokenizer SEEDRUN/data_v10/tokenizer.json --out WORK/data (the same text, the seed's tokenizer)
3. flashlm-eval WORK/imported --data WORK/data, against ../shared/seed/eval_seed_checkpoint.py on CORPUS/valid.txt:
   bits per byte of the whole validation split from both scorers (they treat the last partial window differently)
4. flashlm-export WORK/imported --out WORK/export --int8: the export's own gates, and its int8 PPL against fp32
5. flashlm-run --model WORK/export --prompt "Once upon a time": a story streamed from it (and with --json, the same text)
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEED = ROOT.parent / "shared" / "seed"


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed-run", required=True)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "tinystories"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    seed_run, corpus = Path(args.seed_run), Path(args.corpus)
    work = Path(args.work or tempfile.mkdtemp(prefix="flashlm-seed-import-"))
    tokenizer = seed_run / "data_v10" / "tokenizer.json"
    imported = run([str(BIN / "flashlm-import"), str(seed_run / "fsp_best.pt"), "--tokenizer", str(tokenizer), "--out", str(work / "imported"), "--force"])
    run([str(BIN / "flashlm-prepare"), str(corpus), "--tokenizer", str(tokenizer), "--out", str(work / "data")])
    ours = json.loads(run([str(BIN / "flashlm-eval"), str(work / "imported"), "--data", str(work / "data")]).strip().splitlines()[-1])
    theirs = run([sys.executable, str(SEED / "eval_seed_checkpoint.py"), str(SEED / "train_v10_fsp.py"), str(seed_run / "fsp_best.pt"),
                  str(tokenizer), str(corpus / "valid.txt")])
    found = re.search(r"ppl ([\d.]+) bpb ([\d.]+) tokens (\d+)", theirs)
    seed_ppl, seed_bpb = float(found.group(1)), float(found.group(2))
    run([str(BIN / "flashlm-export"), str(work / "imported"), "--out", str(work / "export"), "--int8", "--data", str(work / "data"), "--force"])
    manifest = json.loads((work / "export" / "manifest.json").read_text())
    story = json.loads(run([str(BIN / "flashlm-run"), "--model", str(work / "export"), "--prompt", "Once upon a time", "--seed", "0",
                            "--json"]))
    streamed = run([str(BIN / "flashlm-run"), "--model", str(work / "export"), "--prompt", "Once upon a time", "--seed", "0"])
    int8 = manifest["validation"]["int8_vs_fp32"]
    ours_bpb = ours["bpb"]
    import torch

    out = {
        "threads": torch.get_num_threads(),
        "seed_checkpoint": {"step": manifest["source"]["imported"]["step"], "seed_val_ppl": manifest["source"]["imported"]["seed_val_ppl"],
                            "sha256": manifest["source"]["imported"]["sha256"]},
        "import": imported.strip(),
        "flashlm_eval": ours, "seed_eval": {"ppl": seed_ppl, "bits_per_byte": seed_bpb, "output": theirs.strip()},
        "bpb_rel_diff": abs(ours_bpb - seed_bpb) / seed_bpb,
        "int8_vs_fp32": int8, "story": {"text": story["text"], "tokens": len(story["token_ids"]), "finish_reason": story["finish_reason"],
                  "streamed_equals_json": streamed.rstrip("\n") == "Once upon a time" + story["text"]},
    }
    print(json.dumps({k: out[k] for k in ("flashlm_eval", "seed_eval", "bpb_rel_diff", "int8_vs_fp32")}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**provenance(packages=("torch", "onnxruntime")), **out}, indent=1))


if __name__ == "__main__":
    main()
