"""Perplexity and bits per byte of an export folder computed by the runtime (onnxruntime, no torch): the whole
validation split (the same non-overlapping 256-token windows as flashlm-eval) and the fixed
text slice that tests/test_default_model.py re-checks against MODEL_CARD.md.

    python bench/eval_export.py --model exports/default-model --data data/tinystories --out results/default_model/eval.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

from flashlm_core import artifacts as A
from flashlm_core import atomic
from flashlm_core.bpb import bits_per_byte, token_byte_lengths
from flashlm_core.errors import CheckpointError
from flashlm_runtime import FlashLM

ROOT = Path(__file__).resolve().parents[1]
# The card's fixed slice: the first SLICE_CHARS characters of the sample's valid.txt, scored after <|endoftext|>.
SLICE_CHARS = 65_536
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "tinystories"


def slice_text(corpus_dir: Path) -> str:
    return (corpus_dir / "valid.txt").read_text(encoding="utf-8")[:SLICE_CHARS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="export folder (default: the bundled model)")
    ap.add_argument("--data", default=A.DATA_DIR, help="prepared data folder (val.bin) for the whole-split PPL")
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="folder with valid.txt for the fixed slice")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    ap.add_argument("--bundle", action="store_true", help="also score the bundled default model (key 'bundle': its int8 graph)")
    args = ap.parse_args()
    val = np.fromfile(Path(args.data) / "val.bin", dtype=np.uint16).astype(np.int64)
    text = slice_text(Path(args.corpus))
    rows = {}
    runs = [("fp32", args.model, False), ("int8", args.model, True)] + ([("bundle", None, True)] if args.bundle else [])
    for key, model, int8 in runs:
        try:
            lm = FlashLM(model, int8=int8, threads=2)
        except CheckpointError as exc:  # an --int8-only bundle has no fp32 graph
            print(f"{key}: skipped ({exc})")
            continue
        t0 = time.perf_counter()
        full, part = lm.score_ids(val.tolist()), lm.score(text)
        n_bytes = int(token_byte_lengths(lm.tokenizer)[val[1:]].sum())  # UTF-8 bytes of every scored token
        rows[key] = r = {"ops": lm.ops,
            "val_full_ppl": full.ppl, "val_full_bpb": bits_per_byte(full.nll, n_bytes), "val_full_tokens": full.tokens,
            "val_full_bytes": n_bytes, "slice_ppl": part.ppl, "slice_tokens": part.tokens, "seconds": time.perf_counter() - t0}
        print(f"{key} ({lm.ops}): full-valid PPL {r['val_full_ppl']:.3f}, {r['val_full_bpb']:.4f} bits/byte ({full.tokens:,} tokens), "
              f"slice PPL {r['slice_ppl']:.3f} ({part.tokens:,} tokens) in {r['seconds']:.1f} s")
    if args.out:
        report = {**provenance(packages=("onnxruntime",)), "threads": 2, "model": args.model or "bundled default", "slice_chars": SLICE_CHARS, **rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(Path(args.out), report)


if __name__ == "__main__":
    main()
