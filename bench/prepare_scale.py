"""flashlm-prepare at the full corpus's scale: wall time, MB/s and peak memory at 0.1, 0.5 and 2 GB, then a tiny-preset
run on the 2 GB token files (its memory at step 100 and at the last step, and how soon its first step ends).

    python bench/prepare_scale.py [--sizes 0.1,0.5,2] [--workdir /tmp/flashlm-scale] [--baseline-tree DIR --baseline-size 0.1]

Each corpus is shuffled repeats of ../shared/data/tinystories-plus/train.txt up to the size (the text's content
matters to neither speed nor memory), with that folder's valid.txt; prepared with the default settings (a BPE-4096
trained on the first 200M characters). Memory is the peak of the resident set summed over the whole process tree,
sampled every 50 ms. `encode_batch` is tokenizers' own speed on all cores over the first 64 MB of stories held in
memory: the bar the streaming path is measured against. --baseline-tree runs the same prepare with the flashlm
package of another checkout (say the commit before the streaming path) on one size. Nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procmem import last_json_line_step, watched  # noqa: E402
from provenance import ROOT, provenance  # noqa: E402

from flashlm.data import read_txt_stories  # noqa: E402
from flashlm_core import atomic  # noqa: E402
from flashlm_core.artifacts import EOT  # noqa: E402

PLUS = ROOT.parent / "shared" / "data" / "tinystories-plus"
RESULT = ROOT / "results" / "prepare_scale.json"
PREPARE = """
import json, sys
sys.path[:0] = [p for p in sys.argv[3:] if p]
from flashlm.data import prepare
meta = prepare(sys.argv[1], sys.argv[2], force=True)
print(json.dumps({k: meta.get(k) for k in ("tokens", "stories", "timing")}))
"""


def make_corpus(folder: Path, size: int, stories: list[str]) -> int:
    """train.txt of shuffled repeats of stories up to size bytes, and tinystories-plus's valid.txt; its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, written = random.Random(0), 0
    with open(folder / "train.txt.tmp", "w", encoding="utf-8") as f:
        while written < size:
            order = stories[:]
            rng.shuffle(order)
            for story in order:
                piece = f"{story}\n{EOT}\n"
                f.write(piece)
                written += len(piece.encode())
                if written >= size:
                    break
    os.replace(folder / "train.txt.tmp", folder / "train.txt")
    (folder / "valid.txt").write_bytes((PLUS / "valid.txt").read_bytes())
    return (folder / "train.txt").stat().st_size + (folder / "valid.txt").stat().st_size


def encode_batch_speed(stories: list[str], budget: int = 64 << 20) -> float:
    """MB/s of tokenizers' encode_batch on all cores over stories held in memory (the first `budget` bytes)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / "models" / "flashlm-v10-fsp-onnx" / "tokenizer.json"))
    texts, size = [], 0
    while size < budget:
        for s in stories:
            texts.append(s)
            size += len(s.encode())
            if size >= budget:
                break
    t0 = time.perf_counter()
    for i in range(0, len(texts), 5000):
        tok.encode_batch(texts[i : i + 5000])
    return size / 1e6 / (time.perf_counter() - t0)


def prepare_row(corpus: Path, out: Path, *, tree: str = "") -> dict:
    run = watched([sys.executable, "-c", PREPARE, str(corpus), str(out), tree, str(Path(tree) / "core") if tree else ""])
    data_bytes = sum((corpus / n).stat().st_size for n in ("train.txt", "valid.txt"))
    meta = json.loads(run["stdout"].strip().splitlines()[-1])
    timing = meta.get("timing") or {}
    return {"corpus_bytes": data_bytes, "seconds": run["seconds"], "mb_per_s": data_bytes / 1e6 / run["seconds"],
            "peak_rss_bytes": run["peak_rss_bytes"], "tokens": meta["tokens"], "stories": meta["stories"], "timing": timing,
            "tokenizing_share": timing["tokenize"] / run["seconds"] if timing else None, "flashlm_tree": tree or str(ROOT)}


def training_check(data: Path, work: Path, steps: int) -> dict:
    """A tiny-preset run on the prepared folder: RSS at step 100 and at its last step, and when step 1 ended."""
    metrics, seen = work / "tiny-run" / "metrics.jsonl", {}

    def on_sample(rss: int, t: float) -> None:
        step = last_json_line_step(metrics)
        if step >= 1 and "first_step_s" not in seen:
            seen["first_step_s"] = t
        for mark in (100, steps):
            if step >= mark and f"rss_at_{mark}" not in seen:
                seen[f"rss_at_{mark}"] = rss

    cmd = [str(Path(sys.executable).parent / "flashlm-train"), "--data", str(data), "--out", str(work / "tiny-run"), "--preset", "tiny",
           "--seq-len", "128", "--max-steps", str(steps), "--log-every", "10", "--eval-every", str(steps), "--threads", "2", "--no-bf16", "--quiet", "--force"]
    run = watched(cmd, on_sample=on_sample)
    return {"command": " ".join(["flashlm-train", *cmd[1:]]), "steps": steps, "seconds": run["seconds"],
            "peak_rss_bytes": run["peak_rss_bytes"], "train_bin_bytes": (data / "train.bin").stat().st_size, **seen}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.1,0.5,2", help="corpus sizes in GB (1e9 bytes)")
    ap.add_argument("--workdir", default="/tmp/flashlm-scale")
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--baseline-tree", default=None, help="another checkout whose flashlm package prepares one size")
    ap.add_argument("--baseline-size", type=float, default=0.1)
    args = ap.parse_args()
    work = Path(args.workdir)
    stories = read_txt_stories(PLUS / "train.txt")
    record = {**provenance(packages=("tokenizers", "torch")), "cores": os.cpu_count(), "encode_batch_mb_per_s": encode_batch_speed(stories),
              "rows": []}
    sizes = [float(x) for x in args.sizes.split(",")]
    for gb in sizes:
        corpus = work / f"corpus-{gb}gb"
        make_corpus(corpus, int(gb * 1e9), stories)
        row = {"gb": gb, **prepare_row(corpus, work / f"data-{gb}gb")}
        record["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("gb", "seconds", "mb_per_s", "peak_rss_bytes", "tokenizing_share")}), flush=True)
        if gb == args.baseline_size and args.baseline_tree:
            base = {"gb": gb, "baseline": True, **prepare_row(corpus, work / f"data-{gb}gb-baseline", tree=str(Path(args.baseline_tree).resolve()))}
            record["rows"].append(base)
            print(json.dumps({k: base[k] for k in ("gb", "seconds", "mb_per_s", "peak_rss_bytes")}), flush=True)
        atomic.write_json(RESULT, record)
    record["training"] = training_check(work / f"data-{max(sizes)}gb", work, args.train_steps)
    print(json.dumps(record["training"]), flush=True)
    atomic.write_json(RESULT, record)


if __name__ == "__main__":
    main()
