"""The recipe runs kept in results/recipes/ as one Markdown table: steps, tokens, whole-valid PPL and bits per byte.

    python bench/recipe_table.py [NAME ...] [--against NAME] [--results results/recipes]

Each row reads NAME/summary.json (what flashlm-train printed: the whole-validation figures of best/ and last/)
and NAME/run.json (the command, CPU and threads, written by bench/recipe_run.sh). "vs" is the bits-per-byte
change against the run named by --against.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    run = json.loads((folder / "run.json").read_text())
    best, last = summary["val_full_best"], summary["val_full_last"]
    # runs of the first round predate bits per byte and the CPU / threads fields of run.json
    return {"name": folder.name, "args": run["args"], "cpu": run.get("cpu", "?"), "threads": run.get("threads", "?"), "data": run.get("data"),
            "steps": summary["step"], "tokens": summary["tokens_seen"], "ppl": best["ppl"], "bpb": best.get("bpb"),
            "last_bpb": last.get("bpb")}


def _bpb(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="run folders under --results (default: all)")
    ap.add_argument("--results", type=Path, default=Path("results/recipes"))
    ap.add_argument("--against", default=None, help="the run the 'vs' column compares with")
    args = ap.parse_args()
    names = args.names or sorted(p.name for p in args.results.iterdir() if (p / "summary.json").is_file() and (p / "run.json").is_file())
    rows = [row(args.results / n) for n in names]
    ref = row(args.results / args.against)["bpb"] if args.against else None
    print(table(rows, ref=ref))


def table(rows: list[dict], *, ref: float | None = None) -> str:
    """The Markdown table of rows (from row()); 'vs' against the bits per byte ref when given."""
    lines = ["| run | flags | CPU, threads | steps | tokens | whole-valid PPL | bits/byte (best) | (last) | vs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = f"{100 * (r['bpb'] / ref - 1):+.2f} %" if ref and r["bpb"] else ""
        lines.append(f"| {r['name']} | `{r['args']}` | {r['cpu']}, {r['threads']} | {r['steps']:,} | {r['tokens'] / 1e6:.2f} M | "
                     f"{r['ppl']:.2f} | **{_bpb(r['bpb'])}** | {_bpb(r['last_bpb'])} | {vs} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
