"""Whether a change to the exporter kept its output: the same checkpoint exported by two checkouts (both ops variants,
int8, and a q8_0 GGUF), the graph and GGUF files compared byte for byte.

    git worktree add /tmp/before COMMIT
    python bench/export_identity.py CHECKPOINT --before /tmp/before --data data/tinystories [--json results/...json]

Manifests and sidecars are not compared: they record the commit and may gain fields. A GGUF that differs is taken
apart: which tensors and which metadata keys (flashlm.validation records measured torch-vs-GGUF differences, which
move when the torch side does). Exit 1 when a file differs.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

EXPORT = """
import sys
tree, checkpoint, data, out = sys.argv[1:5]
sys.path[:0] = [tree, f"{tree}/core", f"{tree}/export", f"{tree}/runtime"]
from flashlm_export.exporter import export
from flashlm_export.gguf_export import export_gguf
for ops in ("plain", "contrib"):
    export(checkpoint, f"{out}/{ops}", int8=True, data_dir=data, ops=ops, force=True, log=lambda *a: None)
export_gguf(checkpoint, f"{out}/model.q8_0.gguf", data_dir=data, force=True, log=lambda *a: None)
"""


def export_with(tree: Path, checkpoint: str, data: str, out: Path) -> None:
    r = subprocess.run([sys.executable, "-c", EXPORT, str(tree), checkpoint, data, str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"export with {tree} failed: {r.stderr[-2000:]}")


def gguf_differences(a: Path, b: Path) -> dict:
    """Which tensors (by their bytes) and which metadata keys (by their values) of two GGUF files differ."""
    from gguf import GGUFReader

    ra, rb = GGUFReader(str(a)), GGUFReader(str(b))
    ta, tb = ({t.name: t.data.tobytes() for t in r.tensors} for r in (ra, rb))
    fa, fb = ({k: [bytes(p) for p in f.parts] for k, f in r.fields.items()} for r in (ra, rb))
    return {"tensors": sorted(n for n in ta.keys() | tb.keys() if ta.get(n) != tb.get(n)),
            "metadata": sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--before", required=True, help="a checkout of the commit to compare against (git worktree add)")
    ap.add_argument("--data", required=True, help="prepared data folder for the exports' checks")
    ap.add_argument("--json", default=None, help="write the comparison here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "before", Path(tmp) / "after"
        export_with(Path(args.before).resolve(), args.checkpoint, args.data, old)
        export_with(ROOT, args.checkpoint, args.data, new)
        files = sorted(p.relative_to(old).as_posix() for p in old.rglob("*") if p.suffix in (".onnx", ".gguf"))
        rows = {f: filecmp.cmp(old / f, new / f, shallow=False) if (new / f).exists() else False for f in files}
        gguf_parts = {f: gguf_differences(old / f, new / f) for f, same in rows.items() if f.endswith(".gguf") and not same}
    before = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.before, capture_output=True, text=True).stdout.strip()
    record = {**provenance(), "checkpoint": args.checkpoint, "before_commit": before, "identical": rows, "gguf_differences": gguf_parts}
    for f, same in rows.items():
        print(f"{'identical' if same else 'DIFFERS  '}  {f}")
        if f in gguf_parts:
            parts = gguf_parts[f]
            print(f"           tensors {'identical' if not parts['tensors'] else 'differ: ' + ', '.join(parts['tensors'])}; "
                  f"metadata keys that differ: {', '.join(parts['metadata']) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    if not all(rows.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
