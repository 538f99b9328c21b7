"""Fine-tuning measured: the shipped model on text it never saw (Debian's fortunes), untouched, fine-tuned, and trained
from scratch for the same steps, in bits per byte on held-out entries.

    sudo apt-get install fortunes            # or: make fortunes
    python bench/fine_tune.py [--steps 600] [--threads 2] [--workdir runs/fine-tune-STEPS]
    python bench/report.py                   # results/fine_tune/fortunes-STEPS.json -> the table in docs/import-and-fine-tune.md

The corpus is every fortune database the `fortunes` and `fortunes-min` packages install (each file with a .dat index
beside it), cut into entries at the lines that hold only `%`, deduplicated on their whitespace-collapsed text, and split
by a hash of that text: an entry is held out when its sha256 is 0 mod 10. So no held-out entry has a copy in train, and
the split depends on neither file order nor any model. The shipped model trained on TinyStories only.
Both trainings run the default recipe with the same steps, tokens, data order and seed; the fine-tune starts from
`--init-from default` at a quarter of the recipe's peak learning rate, chosen before any run. Each is scored at its
last step (last/): best/ is picked on the held-out split, so scoring it would select on the test. Nothing else may run
on the machine meanwhile (the steps are fixed, so this changes only how long it takes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

from flashlm_core import atomic  # noqa: E402
from flashlm_core.artifacts import EOT  # noqa: E402

BIN = Path(sys.executable).parent
FORTUNES = Path("/usr/share/games/fortunes")
RESULTS = ROOT / "results" / "fine_tune"  # fortunes-STEPS.json, one a budget
SHIPPED = ROOT / "models" / "flashlm-v10-fsp"
FINE_TUNE_FLAGS = ["--init-from", "default", "--lr", "5e-4", "--min-lr", "5e-6", "--warmup-steps", "50"]


def entries(folder: Path) -> tuple[list[str], list[str]]:
    """(files read, entries): the plain-text fortune databases of folder, cut at '%' lines, deduplicated."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.with_name(p.name + ".dat").exists())
    if not files:
        raise SystemExit(f"{folder}: no fortune databases; install them: sudo apt-get install fortunes (or make fortunes)")
    seen, out = set(), []
    for path in files:
        for entry in re.split(r"^%\n", path.read_text(encoding="utf-8"), flags=re.M):
            entry = entry.rstrip()
            key = " ".join(entry.split())
            if key and key not in seen:
                if EOT in entry:
                    raise SystemExit(f"{path}: an entry holds {EOT}, the story separator")
                seen.add(key)
                out.append(entry)
    return [p.name for p in files], out


def held_out(entry: str) -> bool:
    return int(hashlib.sha256(" ".join(entry.split()).encode()).hexdigest(), 16) % 10 == 0


def write_corpus(folder: Path, items: list[str]) -> dict:
    """train.txt and valid.txt in the TinyStories layout (each entry followed by a line holding <|endoftext|>)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": [e for e in items if not held_out(e)], "valid": [e for e in items if held_out(e)]}
    for name, part in splits.items():
        atomic.write_bytes(folder / f"{name}.txt", "".join(f"{e}\n{EOT}\n" for e in part).encode())
    return {name: len(part) for name, part in splits.items()}


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def measure(args) -> None:
    work = Path(args.workdir or f"runs/fine-tune-{args.steps}")
    files, items = entries(FORTUNES)
    counts = write_corpus(work / "corpus", items)
    data = work / "data"
    prepared = run([str(BIN / "flashlm-prepare"), str(work / "corpus"), "--tokenizer", str(SHIPPED / "tokenizer.json"), "--out", str(data)])
    meta = json.loads((data / "meta.json").read_text())
    record = {**provenance(), "corpus": {"package": "fortunes, fortunes-min (Debian)", "files": files, "entries": counts,
                                         "tokens": meta["tokens"], "prepare": prepared.strip()},
              "steps": args.steps, "threads": args.threads, "seed": args.seed, "runs": {}}
    untouched = json.loads(run([str(BIN / "flashlm-eval"), str(SHIPPED), "--data", str(data)]))
    record["runs"]["shipped model, untouched"] = {"command": f"flashlm-eval {SHIPPED.relative_to(ROOT)} --data {data}", **untouched}
    common = ["--data", str(data), "--max-steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed),
              "--no-bf16", "--quiet", "--force"]
    for name, out, flags in (("trained from scratch", work / "scratch", []),
                             ("fine-tuned from the shipped model", work / "fine-tuned", FINE_TUNE_FLAGS)):
        cmd = [str(BIN / "flashlm-train"), *common, "--out", str(out), *flags]
        summary = json.loads(run(cmd))
        record["runs"][name] = {"command": " ".join(["flashlm-train", *cmd[1:]]), **summary["val_full_last"],
                                "step": summary["step"], "tokens_seen": summary["tokens_seen"], "elapsed": summary["elapsed"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic.write_json(RESULTS / f"fortunes-{args.steps}.json", record)
    print(json.dumps({name: r["bpb"] for name, r in record["runs"].items()}))
    print("the table in docs/import-and-fine-tune.md: python bench/report.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--workdir", default=None, help="default: runs/fine-tune-STEPS")
    measure(ap.parse_args())


if __name__ == "__main__":
    main()
