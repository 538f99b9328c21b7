"""A flashlm-train summary (the JSON it prints) as a results file: the summary with the command, commit, CPU and flags.

    python bench/train_record.py SUMMARY.json --command "make default-model" --out results/default_model/train_summary.json [--commit REV] [--note TEXT]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

from flashlm_core import atomic  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", help="the JSON flashlm-train printed")
    ap.add_argument("--command", required=True, help="the command that trained (what a reader runs to reproduce it)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default=None, help="the commit the run trained at, when the record is made later (default: HEAD)")
    ap.add_argument("--note", default=None, help="anything that bears on the figures (a shared machine, say)")
    args = ap.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    record = {**provenance(), "command": args.command, **summary, **({"note": args.note} if args.note else {})}
    if args.commit:
        record["commit"] = subprocess.run(["git", "rev-parse", args.commit], capture_output=True, text=True, check=True).stdout.strip()
    atomic.write_json(args.out, record)


if __name__ == "__main__":
    main()
