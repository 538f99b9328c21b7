"""The generated parts of MODEL_CARD.md and docs/, rendered from results/ and the shipped files alone.

    python bench/report.py            # rewrite every generated block
    python bench/report.py --check    # exit 1 naming each block that differs from what results/ gives
    python bench/report.py samples    # run the shipped bundle for the card's samples -> results/default_model/samples.json

A block sits between `<!-- generated: NAME (python bench/report.py) -->` and `<!-- end: NAME -->`; everything between
the two lines is rewritten. tests/test_docs.py runs --check, so a results file changed without its tables fails CI.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe_table  # noqa: E402
from budget_pair import SEED_STEP_TOKENS  # noqa: E402
from provenance import ROOT, provenance  # noqa: E402

from flashlm_core import atomic  # noqa: E402
from flashlm_core.cpu import kind_cap  # noqa: E402

CARD = ROOT / "MODEL_CARD.md"
RESULTS = ROOT / "results" / "default_model"
BUNDLE = ROOT / "runtime" / "flashlm_runtime" / "default_model"
PORTABLE = ROOT / "models" / "flashlm-v10-fsp-onnx"
CHECKPOINT = ROOT / "models" / "flashlm-v10-fsp"
GGUF = ROOT / "models" / "flashlm-v10-fsp.q8_0.gguf"
SAMPLE_PROMPTS = ("Once upon a time", "A cat sat", "The little girl")


def begin(name: str) -> str:
    return f"<!-- generated: {name} (python bench/report.py) -->"


def end(name: str) -> str:
    return f"<!-- end: {name} -->"


def replace_block(text: str, name: str, body: str, *, where: str) -> str:
    """text with the block NAME's body replaced; a missing marker is an error naming the file."""
    pattern = re.compile(re.escape(begin(name)) + r"\n.*?" + re.escape(end(name)), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{where}: no block {name!r} (a line {begin(name)!r}, then one {end(name)!r})")
    return pattern.sub(lambda _: f"{begin(name)}\n{body.strip()}\n{end(name)}", text, count=1)


def mb(path: Path) -> str:
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{size / 1e6:.2f} MB"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def card_model() -> str:
    ev, train = _json(RESULTS / "eval.json"), _json(RESULTS / "train_summary.json")
    bundle = ev["bundle"]
    return f"""It ships inside the runtime package as int8 ONNX in onnxruntime's fused ops
(`runtime/flashlm_runtime/default_model/`, `--ops contrib`, {mb(BUNDLE)}) and runs on onnxruntime + numpy + tokenizers
alone. The same weights: in plain ONNX ops for transformers.js, the browser, optimum and genai in
`models/flashlm-v10-fsp-onnx/` ({mb(PORTABLE)}); as a llama.cpp file `models/flashlm-v10-fsp.q8_0.gguf` ({mb(GGUF)});
and as the fp32 checkpoint they were all exported from, `models/flashlm-v10-fsp/` ({mb(CHECKPOINT)}, safetensors), which
`flashlm-train --init-from default` fine-tunes.

**What it is:** a 3,737,856-parameter story model trained with the `flashlm-train` default recipe for
{train['step']:,} steps of 16 × 256 tokens ({train['tokens_seen'] / 1e6:.1f}M tokens) on a *1.53M-token sample* of
TinyStories. Whole-validation **{bundle['val_full_bpb']:.4f} bits per byte** (int8 as shipped, PPL
{bundle['val_full_ppl']:.2f}; {ev['fp32']['val_full_bpb']:.4f} in fp32). It writes short, simple children's stories whose
characters and objects still drift. It is a demonstration of the toolkit, not a useful language model."""


def card_run() -> str:
    train, cfg = _json(RESULTS / "train_summary.json"), _json(CHECKPOINT / "config.json")
    return f"""This model: `{train['command']}` at commit {train['commit'][:10]}, {train['elapsed'] / 60:.0f} minutes on
{train['cpu']} ({train['threads']} threads, fp32{'; ' + train['note'] if train.get('note') else ''}). The shipped weights
are its `best/` checkpoint, step {cfg['step']:,} of {train['step']:,}, chosen by PPL on a fixed 64-window subset of the
validation split (16,384 of 163,258 tokens, a small selection bias); `models/flashlm-v10-fsp/model.safetensors` has
sha256 {_json(BUNDLE / 'manifest.json')['source']['weights_sha256'][:16]}…, recorded in every export's provenance."""


def _variant(record: dict, name: str) -> dict:
    return next(v for v in record["variants"] if v["variant"] == name)


def card_speed_bf16() -> str:
    """The step ratio that sized the recipe runs on the AMD EPYC with native bf16."""
    r = _json(ROOT / "results" / "bench" / "train_speed_avx512bf16.json")
    ratio = _variant(r, "flashlm default --dropout 0.1 (embedding + residual)")["ratio"]
    return f"""Equal wall clock on that CPU: {_made_by(r)} measured the default step (bf16, dropout 0.1) at
{ratio:.2f}× the seed's formulation, so 30 minutes buy 800 × {ratio:.2f} ≈ {800 * ratio:,.0f} steps of 8,192 tokens; 1,850 × 8,192
= 3,700 × 4,096 tokens were run, leaving room for the periodic evals."""


def card_speed_fp32() -> str:
    """The default's fp32 step against the seed's on the Cascade Lake Xeon (no native bf16)."""
    r = _json(ROOT / "results" / "bench" / "train_speed_avx512_nobf16.json")
    seed = _variant(r, "seed formulation (fp32, manual attn, dropout 0.1, 4x8)")
    ours = [_variant(r, n) for n in ("flashlm default (--dropout 0.1: embedding + residual)", "flashlm default --no-bf16 (fp32)")]
    lo, hi = min(v["ratio"] for v in ours), max(v["ratio"] for v in ours)
    fastest = max(v["tok_s"] for v in ours)
    return f"""**On a CPU without native bf16** (the previous model's CPU, a 2-vCPU Intel Xeon Cascade Lake) the default trains in
fp32 at {lo:.2f}–{hi:.2f}× the seed's formulation ({_made_by(r)}: seed {seed['tok_s']:,.0f} tok/s, default
{min(v['tok_s'] for v in ours):,.0f}–{fastest:,.0f}), so 30 minutes buy fewer steps there (about {30 * 60 * fastest / 4096:,.0f} of 4,096 tokens
against the seed's {30 * 60 * seed['tok_s'] / SEED_STEP_TOKENS:,.0f} of {SEED_STEP_TOKENS:,}); the equal-wall-clock pair was not run on that CPU."""


def card_results() -> str:
    ev, torch_fp32 = _json(RESULTS / "eval.json"), _json(RESULTS / "train_summary.json")["val_full_best"]
    bundle_v = _json(BUNDLE / "manifest.json")["validation"]
    plain_v = _json(PORTABLE / "manifest.json")["validation"]
    fp32, int8, bundle = ev["fp32"], ev["int8"], ev["bundle"]

    def rel(row: dict) -> str:
        return f"{row['val_full_ppl'] / fp32['val_full_ppl'] - 1:+.2%}".replace("%", " %")

    q = bundle_v["int8_vs_fp32"]
    return f"""| model | full-valid PPL | bits/byte |
|---|---|---|
| torch fp32 (`models/flashlm-v10-fsp`, flashlm-eval) | {torch_fp32['ppl']:.2f} | {torch_fp32['bpb']:.4f} |
| ONNX fp32 (runtime, plain ops) | {fp32['val_full_ppl']:.2f} | {fp32['val_full_bpb']:.4f} |
| ONNX int8 (runtime, plain ops: `models/flashlm-v10-fsp-onnx`) | {int8['val_full_ppl']:.2f} ({rel(int8)}) | {int8['val_full_bpb']:.4f} |
| ONNX int8 (runtime, contrib ops: the **shipped** bundle) | {bundle['val_full_ppl']:.2f} ({rel(bundle)}) | **{bundle['val_full_bpb']:.4f}** |

| runtime check | tokens | PPL |
|---|---|---|
| int8, fixed slice (first 65,536 characters of valid.txt, scored after `<\\|endoftext\\|>`) | {bundle['slice_tokens']:,} | **{bundle['slice_ppl']:.2f}** |

`tests/test_default_model.py` recomputes the fixed-slice figure with the shipped model and requires it within 1 % of
this card. At export, ONNX fp32 matched torch to {bundle_v['fp32_vs_torch']['max_abs_decode']:.1e} (contrib) and
{plain_v['fp32_vs_torch']['max_abs_decode']:.1e} (plain) (max |Δlogit|, {bundle_v['fp32_vs_torch']['prompts']} prompts, prefill +
{bundle_v['fp32_vs_torch']['decode_steps']} decode steps), the FSP head to {bundle_v['fsp_vs_torch']['max_abs']:.1e}; int8 against
fp32 on {q['tokens']:,} validation tokens (contrib): top-1 {q['top1_agreement_clear']:.1%} on the {q['clear_positions']:,} positions
where fp32 is clear ({q['top1_agreement']:.1%} on all), mean KL {q['kl_mean']:.4f}, PPL {q['ppl_rel_delta']:+.2%} on those windows.
The two int8 graphs hold the same quantized weights; they differ in the attention kernel."""


def card_samples() -> str:
    record = _json(RESULTS / "samples.json")
    quotes = "\n\n".join("> **" + s["prompt"] + "**" + s["text"].replace("\n", "\n> ") for s in record["samples"])
    plan = ", ".join(f"{word} {p:.2f}" for word, p in record["plan"])
    return f"""`flashlm-run --prompt PROMPT --seed 0 --max-new-tokens 120` (temperature 0.8, top-p 0.9, the int8 bundle;
on {record['cpu']}: int8 kernels differ between CPUs, so another machine may print other stories):

{quotes}

FSP plan read-out (`flashlm-run --prompt "Once upon a time" --plan`): {plan}."""


def fine_tune() -> str:
    records = sorted((_json(p) for p in (ROOT / "results" / "fine_tune").glob("fortunes-*.json")), key=lambda r: r["steps"])
    if not records:
        raise FileNotFoundError("results/fine_tune/fortunes-*.json")
    rows = []
    for record in records:
        base = record["runs"]["shipped model, untouched"]["bpb"]
        rows += [f"| {record['steps']:,} | {name} | {r.get('tokens_seen') or 0:,} | {r['ppl']:.2f} | {r['bpb']:.4f} | {r['bpb'] / base - 1:+.1%} |"
                 for name, r in record["runs"].items()]
    c, first = records[0]["corpus"], records[0]
    commands = "; ".join(f"`{r['command']}`" for r in records)
    return f"""Held-out entries of Debian's `fortunes` ({c['entries']['valid']:,} entries, {c['tokens']['validation']:,} tokens; train
{c['entries']['train']:,} entries, {c['tokens']['train']:,} tokens in the shipped model's tokenizer), whole split:

| steps | model | tokens trained on fortunes | PPL | bits/byte | against the untouched model |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Steps of 16 × 256 tokens each, seed {first['seed']}, fp32, {first['threads']} threads on {first['cpu']} (ISA flags
{', '.join(first['cpu_flags'])}). Made by {commands}; the commands and every figure are in
`results/fine_tune/fortunes-STEPS.json`."""


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def prepare_scale() -> str:
    r = _json(ROOT / "results" / "prepare_scale.json")
    rows = []
    for row in r["rows"]:
        timed = row.get("tokenizing_share") is not None
        share = f"{row['tokenizing_share']:.0%}" if timed else ""
        tokenizing = f"{row['corpus_bytes'] / 1e6 / row['timing']['tokenize']:.1f}" if timed else ""
        rows.append(f"| {row['gb']:g} GB{' (before: in memory)' if row.get('baseline') else ''} | {row['stories']['train']:,} | "
                    f"{row['tokens']['train']:,} | {row['seconds']:,.0f} s | {row['mb_per_s']:.1f} | {gib(row['peak_rss_bytes'])} | "
                    f"{share} | {tokenizing} |")
    t = r["training"]
    return f"""`{r['command']}` on {r['cpu']} (ISA flags {', '.join(r['cpu_flags'])}), {r['cores']} cores, commit
`{r['commit'][:10]}`, tokenizers {r['tokenizers']}; nothing else running. Memory is the peak resident set of the whole
process tree (tokenizer threads included).

| corpus | stories | train tokens | wall time | MB/s | peak memory | time tokenizing | MB/s while tokenizing |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

`tokenizers`' `encode_batch` alone, on all cores over 64 MB of stories held in memory: {r['encode_batch_mb_per_s']:.1f} MB/s, the
bar for the last column (reading, encoding and writing overlap there). The rest of the wall time is the pre-scan and
training the tokenizer on the first 200M characters. The "before" row is the same prepare with the package as it was
before the streaming path, which held the corpus in memory.

Training on the {max(row['gb'] for row in r['rows']):g} GB corpus's token files ({t['train_bin_bytes'] / 1e9:.2f} GB `train.bin`), a
tiny-preset run of {t['steps']:,} steps (`{t['command']}`): its first step ended {t['first_step_s']:.1f} s after the command
started; memory {gib(t['rss_at_100'])} at step 100 and {gib(t[f"rss_at_{t['steps']}"])} at step {t['steps']:,}."""


def ddp_speed() -> str:
    records = [_json(p) for p in sorted((ROOT / "results" / "bench").glob("ddp_speed_*.json"))]
    if not records:
        raise FileNotFoundError("results/bench/ddp_speed_*.json")
    rows = []
    for r in records:
        (one, one_tok), (ddp, ddp_tok) = r["median_tok_s"].items()
        rows.append(f"| {r['cpu']} ({', '.join(r['cpu_flags'])}) | {one_tok:,.0f} | {ddp_tok:,.0f} | {r['ddp_over_threads']:.2f}x |")
    return f"""| CPU (ISA flags) | {one}, tok/s | {ddp}, tok/s | DDP / threads |
|---|---|---|---|
{chr(10).join(rows)}

Medians of {records[0]['repeats']} interleaved runs of {records[0]['steps']} steps each ({records[0]['tokens_per_step']:,} tokens a step on both sides, the
first {records[0]['warm_up_steps']} steps dropped), by `{records[0]['command']}`; the commands are in `results/bench/ddp_speed_*.json`."""


def long_run() -> str:
    r = _json(ROOT / "results" / "long_run" / "minutes-120.json")
    marks = ", ".join(f"{gib(rss)} at step {int(step):,}" for step, rss in r["rss_at_step"].items() if step.isdigit())
    s = r["summary"]
    top = max(step for _, step, _ in r["rss_series"])
    last_t, last_step, last_rss = next(x for x in r["rss_series"] if x[1] == top)  # when the last logged step was first seen
    note = f" {r['note'][0].upper()}{r['note'][1:]}." if r.get("note") else ""
    return f"""`{r['command']}` on {r['cpu']} (ISA flags {', '.join(r['cpu_flags'])}), commit `{r['commit'][:10]}`,
{r['date'][:10]}: the default recipe by the clock, {'bf16' if s['bf16'] else 'fp32'}, {'compiled' if s['compiled'] else 'eager'}, {s['threads']} threads, on the
2 GB corpus's token files ({r['train_tokens']:,} train tokens).{note}

| budget | budget used (the run's clock) | wall time of `flashlm-train` | steps | tokens seen | share of the train split | evaluations (`--eval-every {r['eval_every']}`) | whole-validation bits/byte (PPL) |
|---|---|---|---|---|---|---|---|
| {r['budget_s'] / 60:.0f} min | {r['budget_used']:.1%} | {r['wall_s'] / 60:.1f} min | {r['steps']:,} | {r['tokens_seen']:,} | {r['tokens_seen'] / r['train_tokens']:.1%} | {r['evals']} | {r['val_bpb_full']:.4f} ({r['val_ppl_full']:.2f}) |

The wall time holds what `flashlm-train` does after its budget: scoring `last/` and `best/` on the whole validation
split. A periodic evaluation (the fixed 64-window subset, and `best/` saved when it improves) took {r['eval_seconds']:.2f} s here,
{r['evals'] * r['eval_seconds'] / r['budget_s']:.1%} of the budget over the run, against {r['eval_seconds_small_corpus']:.2f} s in a run on tinystories-plus on the
same kind of machine alone (`{Path(r['small_corpus_metrics']).parent.name}`); this run shared the machine, so the two are not a
speed comparison, but the evaluation reads the same fixed subset at any corpus size. Memory of
the whole process tree (sampled every 5 s): {marks}; {gib(last_rss)} at step {last_step:,}, {last_t / 60:.0f} min
in (the last step logged); {gib(r['peak_rss_bytes'])} at its peak."""


def _made_by(r: dict) -> str:
    return f"`{r['command']}` (commit `{r['commit'][:10]}`, {r['date'][:10]})"


def _speed_rows(glibc: dict, tcmalloc: dict) -> list[str]:
    runs = [{v["variant"]: v for v in r["variants"]} for r in (glibc, tcmalloc)]
    cell = lambda v: f"{v['tok_s']:,.0f} | {v['ratio']:.2f}x" if v else "– | –"
    names = dict.fromkeys([*runs[0], *runs[1]])
    return [f"| {name} | {cell(runs[0].get(name))} | {cell(runs[1].get(name))} |" for name in names]


def _bound(r: dict, precision: str) -> str:
    return (f"the default step does {r['flops_per_token'] / 1e6:.1f} MFLOP of matmul a token; at its measured speed that is "
            f"{r['default_gflops']:,.0f} GFLOP/s against {r['gemm_peak_gflops'][precision]:,.0f} for a 2048³ {precision} GEMM on the same "
            f"threads; its matmul kernels take {r['default_step_gemm_seconds'] * 1e3:,.0f} of {r['default_step_profiled_seconds'] * 1e3:,.0f} ms "
            f"a step under the profiler, so a step that were only its matmuls would run {r['gemm_only_ratio']:.2f}x the seed's script")


def train_speed(stem: str, precision: str) -> str:
    glibc, tcmalloc = (_json(ROOT / "results" / "bench" / f"{stem}_{a}.json") for a in ("glibc", "tcmalloc"))
    return f"""{glibc['cpu']}, {glibc['threads']} threads, torch {glibc['torch']}; {_made_by(glibc)} and the same under tcmalloc,
{_made_by(tcmalloc)}:

| variant | tok/s, glibc malloc | x seed's script | tok/s, tcmalloc | x seed's script |
|---|---|---|---|---|
{chr(10).join(_speed_rows(glibc, tcmalloc))}

The bound (tcmalloc run): {_bound(tcmalloc, precision)}."""


def train_busy() -> str:
    r = _json(ROOT / "results" / "bench" / "train_busy_amx_bf16.json")
    cell = {(c["policy"], c["threads"], c["load"]): c["median_s"] for c in r["cells"]}
    names = {"default": "libgomp's default spin", "PASSIVE": "`OMP_WAIT_POLICY=PASSIVE`",
             "GOMP_SPINCOUNT=10000": "`GOMP_SPINCOUNT=10000` (flashlm-train's)"}
    busy = next(c["load"] for c in r["cells"] if c["load"] != "idle")
    policies = list(dict.fromkeys(c["policy"] for c in r["cells"]))
    rows = [f"| {names.get(p, p)} | " + " | ".join(f"{cell[(p, t, load)]:.2f} s" for load in ("idle", busy) for t in (1, 2)) + " |"
            for p in policies]
    return f"""{r['cpu']}; {_made_by(r)}. Seconds a default step, each cell in
a fresh process, idle and beside CPU-bound busy loops ({busy}):

| OpenMP wait | idle, 1 thread | idle, 2 threads | busy, 1 thread | busy, 2 threads |
|---|---|---|---|---|
{chr(10).join(rows)}"""


def recipe_runs(*names: str) -> str:
    return recipe_table.table([recipe_table.row(ROOT / "results" / "recipes" / n) for n in names])


def cpu_short(r: dict) -> str:
    """'Intel(R) Xeon(R) Processor, native bf16 flags [...]' -> 'Intel Xeon, AMX'; the ISA that matters for the figure."""
    name = r["cpu"].split(",")[0].replace("(R)", "").replace(" Processor", "")
    flags = set(r.get("cpu_flags", [])) | set(re.findall(r"[a-z0-9_]+", r["cpu"].split(",", 1)[-1]))
    isa = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
           else "AVX2 only")
    capped = " under the AVX2 cap" if "AVX2" in kind_cap(r["cpu"]) else ""
    return f"{name}, {isa}{capped}"


def headlines() -> str:
    ev = _json(RESULTS / "eval.json")
    speed = _json(ROOT / "results" / "bench" / "train_speed_amx_bf16_tcmalloc.json")
    default = next(v for v in speed["variants"] if v["variant"].startswith("flashlm default (") and "compile" in v["variant"])
    decode = _json(ROOT / "results" / "bench" / "decode_vs_llama2c.json")
    bundle = next(m for m, ops in decode["ops"].items() if ops == "contrib")
    med = decode["tok_s_median"]
    latest = {}  # the last serve_load run on each CPU
    for r in sorted((_json(f) for f in (ROOT / "results" / "bench").glob("serve_load_*.json")), key=lambda r: r["date"]):
        latest[r["cpu"]] = r
    serves = list(latest.values())
    ratio = lambda r: r["table"]["8"]["tok_s"] / r["table"]["1"]["tok_s"]
    http = lambda r: r["single_over_library"]
    scale = _json(ROOT / "results" / "prepare_scale.json")
    big = max((r for r in scale["rows"] if not r.get("baseline")), key=lambda r: r["gb"])
    pairs = _json(ROOT / "results" / "avx2" / "budget_pairs.json")
    pair = min(pairs, key=lambda r: r["lead"])
    rows = [
        ("the shipped model", f"**{ev['bundle']['val_full_bpb']:.4f}** bits/byte (PPL {ev['bundle']['val_full_ppl']:.2f}), int8 bundle, "
         f"whole validation split", cpu_short(ev), "[MODEL_CARD.md](MODEL_CARD.md)"),
        ("training step", f"**{default['ratio']:.2f}x** the seed's script (bf16, compiled, tcmalloc for both)", cpu_short(speed),
         "[benchmarks](docs/benchmarks.md)"),
        ("decode", f"**{med[f'{bundle}|greedy|1'] / med['llama2.c|greedy|1']:.2f}x** llama2.c on the same weights (greedy, 1 thread)",
         cpu_short(decode), "[benchmarks](docs/benchmarks.md)"),
        ("serving", "8 streaming clients " + " and ".join(f"**{ratio(r):.2f}x**" for r in serves) + " the tokens/s of one; "
         "one client over HTTP " + " and ".join(f"**{http(r):.0%}**" for r in serves) + " of the library's "
         "(int8, 1 thread, 8 slots)", "; ".join(cpu_short(r) for r in serves), "[serve-load](docs/serve-load.md)"),
        ("preparing data", f"{big['gb']:g} GB of text in {big['seconds'] / 60:.1f} min, **{gib(big['peak_rss_bytes'])}** peak memory",
         cpu_short(scale), "[scale](docs/scale.md)"),
    ]
    rows.append(("30 minutes on an AVX2 CPU", f"**{pair['lead']:.1%}** lower bits/byte than the seed's script in the same time "
                 f"(the `{pair['name']}` run; the least of {len(pairs)} pair{'s' if len(pairs) > 1 else ''} so far)",
                 cpu_short(pair), "[avx2-training](docs/avx2-training.md)"))
    return "| | figure | CPU (2 vCPUs) | more |\n|---|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)


def decode_profile() -> str:
    rows, records = [], [_json(ROOT / "results" / "bench" / f"{n}.json") for n in ("decode_profile_amx", "decode_profile_b8_amx")]
    for r in records:
        for x in r["rows"]:
            top = f"{x['top']:.0f} µs" if x["ops"] == "contrib" else "–"
            rows.append(f"| {x['ops']} | {r['batch']} | {x['past']} on | {x['nodes']} | {x['step_us']:,.0f} µs | {x['weight GEMVs']:.0f} µs "
                        f"({x['weight GEMVs'] / x['step_us']:.0%}) | {x['attention']:,.0f} µs | {x['norms']:.0f} µs | {top} | {x['other']:.0f} µs |")
    return f"""{records[0]['cpu']}, 1 thread; {' and '.join(_made_by(r) for r in records)}:

| graph | batch | cached tokens | nodes | step | weight GEMVs (16 MatMuls + lm_head, int8) | attention | norms | next-token top | other |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}"""


def runtime_speed() -> str:
    rows, records = [], {ops: _json(ROOT / "results" / "bench" / f"runtime_speed_{ops}_amx.json") for ops in ("contrib", "plain")}
    for ops, r in records.items():
        for v in ("int8 t1", "int8 t2", "fp32 t1"):
            step = r["step_ms"][v]
            rows.append(f"| {ops} {v.replace('t1', '1 thread').replace('t2', '2 threads')} | " + " | ".join(f"{step[k]:.3f} ms" for k in ("1", "64", "250"))
                        + f" | {r['prefill256_ms'][v]:.1f} ms | {r['e2e_b1_tok_s'][v]:,.0f} | {r['e2e_b8_tok_s'][v]:,.0f} | "
                        f"{r['e2e_b8_tok_s'][v] / r['e2e_b1_tok_s'][v]:.1f}x | {r['cold_first_token_s'][v]:.3f} s | {r['peak_rss_mb'][v]:.0f} MB |")
    return f"""{records['contrib']['cpu']}; {' and '.join(_made_by(r) for r in records.values())}:

| variant | step @ 1 | @ 64 | @ 250 | prefill 256 | batch-1 tok/s | batch-8 tok/s | b8/b1 | cold TTFT | peak RSS |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}"""


def batch_scaling() -> str:
    r = _json(ROOT / "results" / "bench" / "batch_scaling_amx.json")
    bs = list(r["tok_s"])
    fit = lambda b: r["fixed_us"] + r["per_row_us"] * int(b)
    return f"""{r['cpu']}, {r['threads']} thread; {_made_by(r)}:

| batch | {' | '.join(bs)} |
|---|{'---|' * len(bs)}
| tok/s | {' | '.join(f"{r['tok_s'][b]:,.0f}" for b in bs)} |
| step (fit) | {' | '.join(f"{r['step_us'][b]:,.0f} µs ({fit(b):,.0f})" for b in bs)} |
| of which in `step()` | {' | '.join(f"{r['in_step_us'][b]:,.0f} µs" for b in bs)} |
| x batch 1 | {' | '.join(f"{r['tok_s'][b] / r['tok_s'][bs[0]]:.2f}" for b in bs)} |

Every step pays F = {r['fixed_us']:.0f} µs once ({r['fixed_in_step_us']:.0f} in the graph and its inputs, the rest in Python); every row
adds r = {r['per_row_us']:.0f} µs ({r['per_row_in_step_us']:.0f} in the graph). Batch 8 reaches 4x batch 1 only if r ≤ F / 6 = {r['fixed_us'] / 6:.0f} µs."""


def runtime_busy() -> str:
    out = []
    for name, what in (("runtime_busy_amx", "plain graph"), ("runtime_busy_amx_contrib", "contrib bundle")):
        r = _json(ROOT / "results" / "bench" / f"{name}.json")
        cells = r["cells"]
        cols = list(cells["idle"])
        rows = [f"| {load} | " + " | ".join(f"{cells[load][c]['tok_s']:,.0f} tok/s ({cells[load][c]['threads_used']} used)" for c in cols) + " |"
                for load in cells]
        out.append(f"""The {what}: {_made_by(r)}

| | {' | '.join(cols)} |
|---|{'---|' * len(cols)}
{chr(10).join(rows)}""")
    return "\n\n".join(out)


def llama_cpp_speed() -> str:
    out = []
    for name in ("llama_cpp_speed", "llama_cpp_speed_amx"):
        r = _json(ROOT / "results" / "bench" / f"{name}.json")
        rows = [f"| {x['threads']} | **{x['flashlm_tok_s']:,.0f}** | {x['llama_cpp_node_tok_s']:,.0f} | {x['llama_cpp_eval_tok_s']:,.0f} "
                f"({1e3 / x['llama_cpp_eval_tok_s']:.2f} ms) | {x['same_greedy_prefix']} |" for x in r["rows"]]
        out.append(f"""{r['cpu']}; `{r['model']}` against `{r['gguf']}`; {_made_by(r)}:

| threads | flashlm int8, tok/s | llama.cpp via node-llama-cpp (wall), tok/s | llama.cpp's own eval time a token, tok/s | greedy tokens equal before they part |
|---|---|---|---|---|
{chr(10).join(rows)}""")
    return "\n\n".join(out)


def web_speed() -> str:
    r = _json(ROOT / "results" / "web" / "speed.json")
    med = r["median_tok_s"]
    row = lambda who: " | ".join(f"{med[f'{who}, {t}']:,.0f} tok/s" for t in ("1 thread", "2 threads"))
    return f"""{r['cpu']}; `{r['model']}`; {_made_by(r)}:

| | 1 thread | 2 threads |
|---|---|---|
| web page (WASM, tokens decoded into the page as they come) | {row('page')} |
| Python runtime (onnxruntime, native) | {row('python')} |"""


def suite_time() -> str:
    r = _json(ROOT / "results" / "tests" / "suite.json")
    counts = ", ".join(f"{n} {kind}" for kind, n in r["counts"].items())
    slow = "\n".join(f"- `{line}`" for line in r["slowest"][:5])
    return f"""`{r['suite_command']}` took **{r['seconds'] / 60:.1f} min** ({counts}) on {r['cpu']} (ISA flags
{', '.join(r['cpu_flags'])}), {r['cores']} cores, nothing else running; commit `{r['commit'][:10]}`, {r['date'][:10]}; by `{r['command']}`.
The five slowest:

{slow}"""


def recipe_figures(name: str) -> dict:
    """A kept run's steps, tokens a step, whole-validation PPL and bits per byte, from what it recorded: summary.json
    (flashlm-train's own scoring of best/), else eval.json (the ONNX fp32 export, for runs kept without it), else
    run.json's whole_valid (the seed's script, scored by its own evaluation)."""
    folder = ROOT / "results" / "recipes" / name
    if (folder / "summary.json").is_file():
        r = _json(folder / "summary.json")
        return {"steps": r["step"], "per_step": r["tokens_seen"] // r["step"], **{k: r["val_full_best"][k] for k in ("ppl", "bpb")}}
    if (folder / "eval.json").is_file():
        fp32 = _json(folder / "eval.json")["fp32"]
        last = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if '"train"' in line][-1]
        return {"steps": last["step"], "per_step": last["tokens_seen"] // last["step"], "ppl": fp32["val_full_ppl"], "bpb": fp32["val_full_bpb"]}
    r = _json(folder / "run.json")
    return {"steps": r["steps"], "per_step": r["tokens_per_step"], **{k: r["whole_valid"][k] for k in ("ppl", "bpb")}}


def recipe_vs(rows: list[tuple[str, str, str | None]], *, against: str) -> str:
    """A table of kept runs, (label, run, the run it is measured against: None for `against`)."""
    ref = {n: recipe_figures(n)["bpb"] for n in {against, *(r for _, _, r in rows if r)}}
    lines = ["| run | steps × tokens | tokens seen | whole-valid PPL | **bits/byte** | vs |", "|---|---|---|---|---|---|"]
    for label, name, base in rows:
        f = recipe_figures(name)
        vs = "—" if name == against else f"{f['bpb'] / ref[base or against] - 1:+.2%}".replace("%", " %").replace("-", "−")
        lines.append(f"| {label} (`{name}`) | {f['steps']:,} × {f['per_step']:,} | {f['steps'] * f['per_step'] / 1e6:.2f} M | "
                     f"{f['ppl']:.2f} | **{f['bpb']:.4f}** | {vs} |")
    return "\n".join(lines)


RECIPES_VS_SEED = [
    ("seed script as published, 800 steps = its 30 minutes on the AMD EPYC", "seed-script-800", None),
    ("our `--recipe seed --max-steps 800` (its schedule rule, attention dropout, fp32)", "seed-recipe-800", None),
    ("R1: lr 2e-3 → 2e-5, warmup 100, dropout 0.1 on embedding + residual, 32 × 256", "r1-lr2e-3-do0.1-1850", None),
    ("R2: R1 with 16 × 256 tokens a step, warmup 200, seed 1337, bf16 (`--recipe round2`)", "r2-lr2e-3-do0.1-b4096-3700", None),
    ("the bundled model before R3: R2, seed 2, fp32 (ONNX fp32 figure)", "r2-cosine-s2-fp32-3700-shipped-before", None),
    ("**R3 = the default**: R2 with warmup-stable-decay, seed 1337, bf16", "r2-wsd0.2-s1337-3700", None),
    ("R3, seed 2, bf16", "r2-wsd0.2-s2-3700", None),
    ("the first shipped R3 model: R3, seed 2, fp32 (ONNX fp32 figure)", "r3-wsd0.2-s2-fp32-3700-first-shipped", None),
]
LEVERS_VS_R2 = [
    ("R2 = the default before round 3 (FSP α 0.1, no EMA, cosine)", "r2-lr2e-3-do0.1-b4096-3700", None),
    ("FSP off (`--fsp-alpha 0`)", "r2-fsp0-s1337-3700", None),
    ("FSP α 0.3 (`--fsp-alpha 0.3`)", "r2-fsp0.3-s1337-3700", None),
    ("EMA of the weights (`--ema 0.998`)", "r2-ema0.998-s1337-3700", None),
    ("**warmup-stable-decay** (`--schedule wsd --decay-frac 0.2`)", "r2-wsd0.2-s1337-3700", None),
    ("warmup-stable-decay, seed 2, bf16 (against the bundled R2 model: seed 2, cosine)", "r2-wsd0.2-s2-3700", "r2-cosine-s2-fp32-3700-shipped-before"),
    ("warmup-stable-decay, seed 2, fp32: the first shipped R3 model (against the same)", "r3-wsd0.2-s2-fp32-3700-first-shipped",
     "r2-cosine-s2-fp32-3700-shipped-before"),
]


FSP_UNDER_R3 = [("α 0", "r3-fsp0-s2-3700", None), ("α 0.03", "r3-fsp0.03-s2-3700", None), ("α 0.1 (default)", "r2-wsd0.2-s2-3700", None)]
FSP_UNDER_R2 = [("α 0", "r2-fsp0-s1337-3700", None), ("α 0.1", "r2-lr2e-3-do0.1-b4096-3700", None), ("α 0.3", "r2-fsp0.3-s1337-3700", None)]
FSP_600 = [("α 0", "r2-fsp0-s1337-600", None), ("α 0.1 (default)", "r2-fsp0.1-s1337-600", None)]


def decode_vs_llama2c() -> str:
    r = _json(ROOT / "results" / "bench" / "decode_vs_llama2c.json")
    med, cols = r["tok_s_median"], [(mode, t) for mode in ("greedy", "top-p") for t in (1, 2)]
    rows = ["| llama2.c `run.c` fp32 | " + " | ".join(f"{med[f'llama2.c|{m}|{t}']:,.0f}" for m, t in cols) + " |"]
    for model, ops in r["ops"].items():
        rows.append(f"| `flashlm-run`, `{model}` (int8, {ops} ops) | " + " | ".join(f"{med[f'{model}|{m}|{t}']:,.0f}" for m, t in cols) + " |")
        rows.append("| ratio to llama2.c | " + " | ".join(f"**{med[f'{model}|{m}|{t}'] / med[f'llama2.c|{m}|{t}']:.2f}x**" for m, t in cols) + " |")
    flags = f" (ISA flags {', '.join(r['cpu_flags'])})" if "cpu_flags" in r else ""
    versions = f", onnxruntime {r['onnxruntime']}" if "onnxruntime" in r else ""
    return f"""`{r['command']}` on {r['cpu']}{flags}, commit `{r['commit'][:10]}`,
{r['date'][:10]}{versions}; tokens/s, medians of {r['repeats']} interleaved runs of {r['new_tokens']} new tokens:

| | greedy, 1 thread | greedy, 2 threads | top-p 0.9, 1 thread | top-p 0.9, 2 threads |
|---|---|---|---|---|
{chr(10).join(rows)}"""


BLOCKS = {  # file -> {block name: renderer}
    ROOT / "README.md": {"headlines": headlines},
    CARD: {"card-model": card_model, "card-run": card_run, "card-results": card_results, "card-samples": card_samples,
           "card-speed-bf16": card_speed_bf16, "card-speed-fp32": card_speed_fp32,
           "card-recipes": lambda: recipe_vs(RECIPES_VS_SEED, against="seed-script-800"),
           "card-levers": lambda: recipe_vs(LEVERS_VS_R2, against="r2-lr2e-3-do0.1-b4096-3700"),
           "card-fsp-r3": lambda: recipe_vs(FSP_UNDER_R3, against="r2-wsd0.2-s2-3700"),
           "card-fsp-r2": lambda: recipe_vs(FSP_UNDER_R2, against="r2-lr2e-3-do0.1-b4096-3700"),
           "card-fsp-600": lambda: recipe_vs(FSP_600, against="r2-fsp0.1-s1337-600")},
    ROOT / "docs" / "import-and-fine-tune.md": {"fine-tune": fine_tune},
    ROOT / "docs" / "tests.md": {"suite-time": suite_time},
    ROOT / "docs" / "recipes.md": {"recipes-vs-seed": lambda: recipe_vs(RECIPES_VS_SEED, against="seed-script-800")},
    ROOT / "docs" / "scale.md": {"prepare-scale": prepare_scale, "long-run": long_run},
    ROOT / "docs" / "training.md": {"ddp-speed": ddp_speed},
    ROOT / "docs" / "benchmarks.md": {"train-speed-bf16": lambda: train_speed("train_speed_amx_bf16", "bf16"),
                                      "train-speed-fp32-avx2": lambda: train_speed("train_speed_avx2cap_fp32", "fp32"),
                                      "train-busy": train_busy, "decode-vs-llama2c": decode_vs_llama2c,
                                      "decode-profile": decode_profile, "runtime-speed": runtime_speed, "batch-scaling": batch_scaling,
                                      "runtime-busy": runtime_busy, "llama-cpp-speed": llama_cpp_speed, "web-speed": web_speed,
                                      "recipes-step": lambda: recipe_runs("r4-faststep-s2-3700", "r4-faststep-s1337-3700", "r4-faststep-mb4x4-s2-3700",
                                                                  "r4-faststep-mb4x4-s1337-3700", "r5-compiled-s2",
                                                                  "r5-compiled-s1337", "r5-eager-randint-s2", "r5-eager-randint-s1337"),
                                      "recipes-budget": lambda: recipe_runs("r5-15min-compiled-s2", "r5-15min-eager-s2",
                                                                            *(f"r6-30min-{k}-s{s}" for k in ("compiled", "eager") for s in (2, 1337)))},
}


def render() -> dict[Path, tuple[str, str]]:
    """file -> (committed text, text with every block rendered)."""
    out = {}
    for path, blocks in BLOCKS.items():
        old = new = path.read_text()
        for name, renderer in blocks.items():
            new = replace_block(new, name, renderer(), where=str(path))
        out[path] = (old, new)
    return out


def samples() -> None:
    """Run the shipped bundle for the card's samples and plan read-out (int8 kernels differ by CPU: recorded with it)."""
    from flashlm_runtime import FlashLM

    lm = FlashLM()
    rows = [{"prompt": p, "text": lm.generate(p, seed=0, max_new_tokens=120).text} for p in SAMPLE_PROMPTS]
    record = {**provenance(packages=("onnxruntime",)), "samples": rows, "plan": lm.plan("Once upon a time")}
    atomic.write_json(RESULTS / "samples.json", record)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=("blocks", "samples"), default="blocks")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated block is stale")
    args = ap.parse_args()
    if args.what == "samples":
        samples()
        return
    stale = []
    for path, (old, new) in render().items():
        if old != new:
            stale.append(path.relative_to(ROOT).as_posix())
            if not args.check:
                atomic.write_bytes(path, new.encode())
    if args.check and stale:
        raise SystemExit(f"stale generated blocks in {', '.join(stale)}: run python bench/report.py")
    print("rewrote " + ", ".join(stale) if stale and not args.check else "generated blocks up to date")


if __name__ == "__main__":
    main()
