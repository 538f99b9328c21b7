"""A run measured in hours: flashlm-train --minutes M on a large prepared corpus, with its memory followed step by step.

    python bench/long_run.py --data DIR [--minutes 120] [--out runs/long-run] [--json results/long_run/NAME.json] [-- TRAIN_FLAGS]

Runs the default recipe by the clock (the default --eval-every) and samples the resident memory of the whole
process tree every 5 s against the step it had reached. Records the budget used (wall time of flashlm-train, the
closing evaluation and checkpoints included, over the budget, and flashlm-train's own figure, from its clock), the steps, the
share of the train split seen, the evaluations and what one costs (against a run on the small corpus), and memory at steps 100, 1,000, 10,000 and at the last logged one: what long
runs must keep (the budget, and nothing growing per step). The wall time also holds what flashlm-train does after its
budget: scoring last/ and best/ on the whole validation split.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procmem import last_json_line_step, watched  # noqa: E402
from provenance import ROOT, provenance  # noqa: E402

from flashlm_core import atomic  # noqa: E402

MARKS = (100, 1000, 10000)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_seconds(rows: list[dict]) -> float | None:
    """Median seconds a periodic evaluation took (with its best/ checkpoint), from metrics.jsonl's rows: the elapsed time
    between the train rows around it, less the steps in between at the median step time."""
    train = [r for r in rows if r["kind"] == "train"]
    evals = {r["step"] for r in rows if r["kind"] == "eval" and r["step"] > 0}
    gaps = [(a["step"], b["step"], b["elapsed"] - a["elapsed"]) for a, b in zip(train, train[1:])]
    holds = lambda a, b: any(a <= e < b for e in evals)
    per_step = [g / (b - a) for a, b, g in gaps if not holds(a, b)]
    if not per_step:
        return None
    step = statistics.median(per_step)
    spent = [g - (b - a) * step for a, b, g in gaps if holds(a, b)]
    return statistics.median(spent) if spent else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared data folder (flashlm-prepare)")
    ap.add_argument("--minutes", type=float, default=120)
    ap.add_argument("--out", default="runs/long-run")
    ap.add_argument("--json", default=None, help="results file (default results/long_run/minutes-M.json)")
    ap.add_argument("--note", default=None, help="a line recorded with the figures (say what else ran meanwhile)")
    ap.add_argument("--small-corpus-metrics", default=str(ROOT / "results" / "recipes" / "r6-30min-compiled-s2" / "metrics.jsonl"),
                    help="a run on the small corpus, whose evaluation time the long run's is set against")
    ap.add_argument("train_flags", nargs="*", help="more flashlm-train flags, after --")
    args = ap.parse_args()
    out = Path(args.out)
    result = Path(args.json or ROOT / "results" / "long_run" / f"minutes-{args.minutes:g}.json")
    metrics = out / "metrics.jsonl"
    series: list[tuple[float, int, int]] = []  # (seconds, step, rss), one every 5 s

    def on_sample(rss: int, t: float) -> None:
        series.append((round(t, 1), last_json_line_step(metrics), rss))

    cmd = [str(Path(sys.executable).parent / "flashlm-train"), "--data", args.data, "--out", str(out), "--minutes", str(args.minutes),
           "--force", "--quiet", *args.train_flags]
    header = provenance()  # the code that trains is the code at the start
    run = watched(cmd, on_sample=on_sample, every=5.0)
    summary = json.loads(run["stdout"][run["stdout"].index("{"):])
    rows = read_rows(metrics)
    train_rows = [r for r in rows if r["kind"] == "train"]
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    at = {str(mark): next(rss for _, step, rss in series if step >= mark) for mark in MARKS
          if any(step >= mark for _, step, _ in series)}
    top = max((step for _, step, _ in series), default=0)
    at[f"{top} (last logged)"] = next((rss for _, step, rss in series if step == top), None)
    config = json.loads((out / "last" / "config.json").read_text())
    record = {**header, "note": args.note, "train_command": " ".join(["flashlm-train", *cmd[1:]]),
              "budget_s": args.minutes * 60, "wall_s": run["seconds"], "budget_used_wall": run["seconds"] / (args.minutes * 60),
              "budget_used": summary.get("budget_used"), "steps": summary["step"], "tokens_seen": summary["tokens_seen"],
              "train_tokens": meta["tokens"]["train"],
              "eval_every": config["train"]["eval_every"], "evals": sum(r["kind"] == "eval" for r in rows),
              "val_bpb_full": summary.get("val_full_last", {}).get("bpb"), "val_ppl_full": summary.get("val_full_last", {}).get("ppl"),
              "tok_s_median": sorted(r["tok_s"] for r in train_rows)[len(train_rows) // 2] if train_rows else None,
              "eval_seconds": eval_seconds(rows), "eval_seconds_small_corpus": eval_seconds(read_rows(Path(args.small_corpus_metrics))),
              "small_corpus_metrics": args.small_corpus_metrics,
              "peak_rss_bytes": run["peak_rss_bytes"], "rss_at_step": at, "rss_series": series[::12], "summary": summary}
    atomic.write_json(result, record)
    print(json.dumps({k: record[k] for k in ("budget_used_wall", "budget_used", "steps", "eval_every", "evals", "peak_rss_bytes", "rss_at_step")}))


if __name__ == "__main__":
    main()
