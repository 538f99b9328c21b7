"""When DDP pays on one machine: 2 processes of 1 thread against 1 process of 2 threads, the same tokens a step.

    python bench/ddp_speed.py [--data data/tinystories] [--steps 40] [--repeats 3] [--json results/bench/ddp_speed_NAME.json]

Both run `flashlm-train --max-steps N` with the default recipe (16 x 256 tokens an optimizer step): one process with
--threads 2 and 4 micro-batches of 4, and `torchrun --standalone --nproc-per-node 2` with --threads 1 and 2
micro-batches of 4 on each rank (DDP, gloo). Tokens/s is the median of the logged steps after the first 10 (warm-up);
the two are interleaved over the repeats and the median of the repeats taken. Nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

from flashlm_core import artifacts as A  # noqa: E402
from flashlm_core import atomic  # noqa: E402

BIN = Path(sys.executable).parent
WARM_UP = 10


def variants(data: str, out: str, steps: int) -> dict[str, list[str]]:
    common = ["--data", data, "--out", out, "--max-steps", str(steps), "--log-every", "1", "--eval-every", str(10 * steps),
              "--micro-batch", "4", "--quiet", "--force"]
    return {"1 process x 2 threads": [str(BIN / "flashlm-train"), *common, "--threads", "2", "--grad-accum", "4"],
            "2 processes x 1 thread (DDP)": [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", str(BIN / "flashlm-train"),
                                             *common, "--threads", "1", "--grad-accum", "2"]}


def tok_s(cmd: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["tok_s"] for r in rows if r["kind"] == "train" and r["step"] > WARM_UP)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=A.DATA_DIR)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        runs = {name: [] for name in variants(args.data, str(out), args.steps)}
        for _ in range(args.repeats):
            for name, cmd in variants(args.data, str(out), args.steps).items():
                runs[name].append(tok_s(cmd, out))
                print(f"{name}: {runs[name][-1]:,.0f} tok/s", flush=True)
    one, ddp = (statistics.median(v) for v in runs.values())
    print(f"DDP 2 x 1 over 1 x 2: {ddp / one:.2f}x")
    if args.json:
        atomic.write_json(Path(args.json), {**provenance(), "steps": args.steps, "repeats": args.repeats, "warm_up_steps": WARM_UP, "tokens_per_step": 16 * 256,
                                            "commands": variants(args.data, "OUT", args.steps), "tok_s": runs,
                                            "median_tok_s": {name: statistics.median(v) for name, v in runs.items()}, "ddp_over_threads": ddp / one})


if __name__ == "__main__":
    main()
