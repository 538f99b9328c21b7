"""Decode speed against llama2.c's run.c on the same weights, end to end, 1 and 2 threads, greedy and top-p.

    python bench/decode_vs_llama2c.py --model EXPORT_DIR [--model EXPORT_DIR ...] [--repeats 7] [--json out.json]

Each --model is run by `flashlm-run` (int8 graph, sampling and detokenisation included, --json stats; --ignore-eos,
as llama2.c here, so both always generate 200 tokens: a story that ends early would count its prefill over fewer tokens);
llama2.c runs the first model's int8 weights dequantized to fp32 (../shared/bench/llama2c/export_to_llama2c.py),
built here with gcc -Ofast -march=native -fopenmp. 200 new tokens after "Once upon a time", every variant
interleaved in each repeat, medians. Ratios are flashlm-run over llama2.c in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

PEER = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "llama2c"
PROMPT = "Once upon a time"
NEW = 200
MODES = {"greedy": (["--temperature", "0"], ["-t", "0"]),
         "top-p": (["--temperature", "0.8", "--top-p", "0.9"], ["-t", "0.8", "-p", "0.9"])}


def build_llama2c(export_dir: str, work: Path) -> Path:
    """run.c compiled here and the export's weights in its format; returns the folder."""
    subprocess.run([sys.executable, str(PEER / "export_to_llama2c.py"), export_dir, str(work)], check=True, capture_output=True)
    subprocess.run(["gcc", "-Ofast", "-march=native", "-fopenmp", str(PEER / "run.c"), "-lm", "-o", str(work / "run")], check=True)
    return work


def llama2c_tok_s(work: Path, ids: list[int], mode: str, threads: int, seed: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENS=",".join(map(str, ids)))
    cmd = [str(work / "run"), str(work / "model.bin"), "-z", str(work / "tokenizer.bin"), "-n", str(len(ids) + NEW), "-i", "x",
           "-s", str(seed + 1), *MODES[mode][1]]
    err = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    return float(err.split("achieved tok/s:")[1].split()[0])


def flashlm_stats(model: str, mode: str, threads: int, seed: int) -> dict:
    cmd = [str(Path(sys.executable).parent / "flashlm-run"), "--model", model, "--prompt", PROMPT, "--max-new-tokens", str(NEW),
           "--threads", str(threads), "--seed", str(seed), "--ignore-eos", "--json", *MODES[mode][0]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["stats"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="export folder (repeatable); llama2.c runs the first one's weights")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from flashlm_core.cpu import cpu_kind
    from flashlm_runtime import FlashLM

    ids = FlashLM(args.model[0]).encode(PROMPT)
    ops = {m: json.loads(Path(m, "manifest.json").read_text()).get("ops", "plain") for m in args.model}
    raw: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = build_llama2c(args.model[0], Path(tmp))
        for rep in range(args.repeats):
            for threads in (1, 2):
                for mode in MODES:
                    raw.setdefault(f"llama2.c|{mode}|{threads}", []).append(llama2c_tok_s(work, ids, mode, threads, rep))
                    for m in args.model:
                        raw.setdefault(f"{m}|{mode}|{threads}", []).append(flashlm_stats(m, mode, threads, rep)["tokens_per_second"])
    med = {k: statistics.median(v) for k, v in raw.items()}
    cpu = cpu_kind()
    print(f"{cpu}; {os.cpu_count()} CPUs; medians of {args.repeats} interleaved runs, {NEW} new tokens after {PROMPT!r}")
    print(f"{'':44s} {'greedy 1t':>10} {'greedy 2t':>10} {'top-p 1t':>10} {'top-p 2t':>10}")
    cols = [(mode, t) for mode in MODES for t in (1, 2)]
    for name in ["llama2.c", *args.model]:
        label = "llama2.c run.c fp32 -Ofast -march=native" if name == "llama2.c" else f"flashlm-run int8 {ops[name]} ({Path(name).name})"
        print(f"{label:44s} " + " ".join(f"{med[f'{name}|{m}|{t}']:>10,.0f}" for m, t in cols))
        if name != "llama2.c":
            print(f"{'  ratio to llama2.c':44s} " + " ".join(f"{med[f'{name}|{m}|{t}'] / med[f'llama2.c|{m}|{t}']:>9.2f}x" for m, t in cols))
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(packages=("onnxruntime",)), "cpu": cpu, "repeats": args.repeats,
                                               "new_tokens": NEW, "ops": ops, "tok_s_median": med, "raw": raw}, indent=2))


if __name__ == "__main__":
    main()
