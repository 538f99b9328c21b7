"""The 30-minute bar on a CPU without native bf16: flashlm-train's default against the seed's own script, pair by pair.

    python bench/budget_pair.py seed --torch-seed 0 --steps 415 --workdir /tmp/seedrun_s0 [--name seed] [--score-only]
    python bench/budget_pair.py default --seed 1337 [--minutes 30] [--threads 2] [--name default] [--against SEEDNAME] [-- FLAGS...]
    python bench/budget_pair.py table     # results/avx2/*.json -> results/avx2/budget_pairs.json and docs/avx2-training.md
    python bench/budget_pair.py host --name NAME [--resume]   # all of one machine's pairs, in order, then the table

seed: the seed's train_v10_fsp.py, unchanged, for --steps optimizer steps (the number its speed in bench/train_speed.py
buys in 30 minutes here) through ../shared/seed/run_seed_by_steps.py with --eval-every equal to the steps, so its weights
at the last step are saved; torch seed 0 is that helper as it is, another seed wraps it with torch.manual_seed(N).
WORKDIR holds the script and its data_v10/ (../shared/seed/README.md). Scored on the whole validation file by
../shared/seed/eval_seed_checkpoint.py.
default: flashlm-train --minutes on data/tinystories-plus as a user runs it; its whole-validation bits per byte come from
the summary flashlm-train prints (flashlm-eval's scorer). Nothing else may run on the machine meanwhile.
host: one machine's pairs in one session, each step as the command above that a user would type: bench/train_speed.py,
our runs one after the other (--against seed-NAME), the seed's two runs side by side on 1 thread each (by steps, so
untimed), the table; --resume skips the steps whose records this machine already wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

from flashlm.plot import read_metrics  # noqa: E402
from flashlm_core.cpu import cpu_kind, kind_cap, kind_name  # noqa: E402

BIN = Path(sys.executable).parent
SEED = ROOT.parent / "shared" / "seed"
RESULTS = ROOT / "results" / "avx2"
DOC = ROOT / "docs" / "avx2-training.md"
CORPUS = ROOT.parent / "shared" / "data" / "tinystories-plus"
VALID = CORPUS / "valid.txt"
LENGTH_MATCH = 0.02  # a run by steps has a 30-minute length's lead when its tokens are within 2 % of that run's
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"  # flashlm-train preloads it; the seed gets it too
SEED_STEP_TOKENS = 4 * 8 * 256  # the seed script's optimizer step: 4 windows x 8 accumulation x 256 tokens (its README)
BAR_LEAD, BAR_BUDGET = 0.25, 0.98  # issue 29's bar: 25 % below the seed's script, at least 98 % of the budget used


def run(cmd: list[str], *, cwd=None, env=None) -> str:
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def seed_command(args) -> list[str]:
    helper = [str(SEED / "run_seed_by_steps.py"), "train_v10_fsp.py", "--alpha", "0.1", "--threads", str(args.threads),
              "--steps", str(args.steps), "--eval-every", str(args.steps)]
    if args.torch_seed == 0:
        return [sys.executable, "-u", *helper]
    wrap = ("import runpy, sys, torch; seed = torch.manual_seed; torch.manual_seed = lambda _: seed({n}); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')").format(n=args.torch_seed)
    return [sys.executable, "-u", "-c", wrap, *helper]


def seed_side(args) -> None:
    work = Path(args.workdir)
    cmd = seed_command(args)
    header = provenance()  # the code as the run starts: a commit made while it trains is not the code that trained
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "LD_PRELOAD": TCMALLOC}
    if not args.score_only:
        (work / "fsp_best.pt").unlink(missing_ok=True)
        (work / "run.log").write_text(run(cmd, cwd=work, env=env))
    log = (work / "run.log").read_text()
    steps = int(re.search(r"optimizer steps run: (\d+)", log).group(1))
    scored = run([sys.executable, str(SEED / "eval_seed_checkpoint.py"), str(SEED / "train_v10_fsp.py"), str(work / "fsp_best.pt"),
                  str(work / "data_v10" / "tokenizer.json"), str(VALID)])
    found = re.search(r"ppl ([\d.]+) bpb ([\d.]+) tokens (\d+)", scored)
    import torch

    saved_step = torch.load(work / "fsp_best.pt", map_location="cpu", weights_only=True)["step"]
    write(f"{args.name}-s{args.torch_seed}", {**header, "side": "seed", "name": args.name, "torch_seed": args.torch_seed, "seed_steps": steps,
                                       "checkpoint_step": saved_step, "threads": args.threads, "run_command": " ".join(cmd),
                                       "run_env": f"OMP_NUM_THREADS={args.threads} LD_PRELOAD={TCMALLOC}", "workdir": str(work),
                                       "seed_ppl": float(found.group(1)), "seed_bpb": float(found.group(2)), "tokens_scored": int(found.group(3))})


def default_side(args) -> None:
    out = ROOT / "runs" / "avx2" / f"{args.name}-s{args.seed}"
    cmd = [str(BIN / "flashlm-train"), "--data", args.data, "--out", str(out), "--minutes", str(args.minutes), "--threads", str(args.threads),
           "--seed", str(args.seed), "--quiet", "--force", *args.flags]
    header = provenance()  # the code as the run starts
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {r.stderr[-2000:]}")
    summary = json.loads(r.stdout)
    lines = [line for line in r.stderr.splitlines() if line.startswith(("precision:", "compile:", "gemm:", "short run:", "threads:", "warning:"))]
    against = {"against": args.against} if args.against else {}
    write(f"{args.name}-s{args.seed}", {**header, "side": "default", "name": args.name, **against, "seed": args.seed, "minutes": args.minutes,
                                        "threads": args.threads, "run_command": " ".join(cmd), "said": lines, "steps": summary["step"],
                                        "tokens_seen": summary["tokens_seen"], "budget_used": summary["budget_used"],
                                        "default_bpb": summary["val_full_last"]["bpb"], "default_ppl": summary["val_full_last"]["ppl"],
                                        "summary": summary})
    (RESULTS / f"{args.name}-s{args.seed}.metrics.jsonl").write_text((out / "metrics.jsonl").read_text())


def write(name: str, record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k.endswith(("bpb", "steps", "budget_used"))}))


def load_results() -> tuple[list[dict], list[dict]]:
    """results/avx2/*.json and the recipe runs of results/recipes/ (recipe_table.row), each read once for the page."""
    from recipe_table import row

    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    folders = [f for f in sorted((ROOT / "results" / "recipes").iterdir()) if (f / "run.json").is_file() and (f / "summary.json").is_file()]
    return [r for r in records if isinstance(r, dict)], [row(f) for f in folders]


def probe_said(record: dict) -> str:
    """The `short run:` line a default-side run's probe printed as it started ('' where it printed none)."""
    return next((line for line in record["said"] if line.startswith("short run:")), "")


def short_run_said(record: dict) -> str:
    """Whether a default-side run trained the short-run recipe: forced by --short-run, or its probe's on/off, with the
    threshold it fell under (SHORT_RUN_TOKENS, or TINY_RUN_TOKENS for the smaller batch)."""
    if "--short-run" in record["run_command"].split():
        return "forced"
    said = probe_said(record)
    under = re.search(r", (under [\d.]+M)\)", said)
    return said.split()[2] + (f", {under.group(1)}" if under else "") if said else "–"


def probe_tok_s(record: dict) -> int | None:
    """The tokens/s a default-side run's probe measured as it started, None where it said none."""
    found = re.search(r"trains ([\d,]+) tokens/s", probe_said(record))
    return int(found.group(1).replace(",", "")) if found else None


def where(cpu: str) -> str:
    """A machine of the pairs in a list line: its model name, and whether the AVX2 cap was on."""
    return f"{kind_name(cpu)}{' under the cap' if kind_cap(cpu) else ''}"


def pair_rows(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Each default-side run of a name paired, in seed order, with a seed-side run (torch seed order) on the same machine:
    the same CPU model and flags under the same ISA cap (cpu_kind names both), so a pair never crosses machines; runs made
    with --against pair only with the seed-side runs of that name, which no other run meets."""
    records = [r for r in records if r.get("side")]
    runs = [r for r in records if r["side"] == "default"]
    claimed = {r["against"] for r in runs if r.get("against")}
    pairs, rows = [], []
    for cpu in sorted({r["cpu"] for r in runs}):
        on_cpu = sorted((r for r in records if r["side"] == "seed" and r["cpu"] == cpu), key=lambda r: r["torch_seed"])
        here = [r for r in runs if r["cpu"] == cpu]
        for name in sorted({r["name"] for r in here}, key=lambda n: (n != "default", n)):
            mine = sorted((r for r in here if r["name"] == name), key=lambda r: r["seed"])
            against = mine[0].get("against")  # --against: its own seed-side runs; otherwise any the runs of --against left
            seeds = [r for r in on_cpu if (r.get("name") == against if against else r.get("name") not in claimed)]
            if not seeds:
                continue
            for i, ours in enumerate(mine):
                theirs = seeds[min(i, len(seeds) - 1)]  # with one seed-side run, every run of ours meets that one
                lead = 1 - ours["default_bpb"] / theirs["seed_bpb"]
                pairs.append({"name": name, "seed": ours["seed"], "torch_seed": theirs["torch_seed"], "default_bpb": ours["default_bpb"],
                              "seed_bpb": theirs["seed_bpb"], "seed_steps": theirs["seed_steps"], "steps": ours["steps"], "tokens_seen": ours["tokens_seen"],
                              "budget_used": ours["budget_used"], "short_run": short_run_said(ours), "probe_tok_s": probe_tok_s(ours), "lead": lead, "cpu": ours["cpu"], "cpu_flags": ours["cpu_flags"],
                              "commit": ours["commit"], "commands": [ours["run_command"], theirs["run_command"]]})
                rows.append(f"| {ours['cpu']} | `{name}` | {short_run_said(ours)} | {ours['seed']} | {ours['steps']:,} | {ours['tokens_seen'] / 1e6:.2f}M | "
                            f"{100 * ours['budget_used']:.1f} % | {ours['default_bpb']:.4f} | {theirs['torch_seed']} | {theirs['seed_steps']} | "
                            f"{theirs['seed_bpb']:.4f} | **{100 * lead:.2f} %** |")
    return pairs, rows


def search_rows(pairs: list[dict], recipes: list[dict]) -> list[str]:
    """The runs by steps (results/recipes/avx2*), each with a lead against the seed's 30 minutes on the machine whose
    30 minutes its tokens match: the AVX2-only CPU's (the default's own run there by steps) or a capped pair's."""
    rows = []
    found = [r for r in recipes if r["name"].startswith("avx2")]
    ref = next((r for r in found if r["name"].startswith("avx2-default-noshort")), None)
    # the pair on the machine the reference ran on (one of the AVX2-only CPUs), by the model name both record
    avx2_only = next((p for p in pairs if ref and "avx512f" not in p["cpu_flags"] and kind_name(p["cpu"]) == ref["cpu"]), None)
    lengths = [(ref["tokens"], avx2_only["seed_bpb"])] if avx2_only else []
    lengths += [(p["tokens_seen"], max(q["seed_bpb"] for q in pairs if q["cpu"] == p["cpu"])) for p in pairs if p is not avx2_only]
    for r in found:
        seed_bpb = next((bpb for tokens, bpb in lengths if abs(r["tokens"] / tokens - 1) <= LENGTH_MATCH), None)
        lead = f"{1 - r['last_bpb'] / seed_bpb:.1%}" if seed_bpb else "–"
        rows.append(f"| `{r['name']}` | `{r['args']}` | {r['cpu']}, {r['threads']} | {r['steps']:,} | {r['tokens'] / 1e6:.2f}M | "
                    f"{r['last_bpb']:.4f} | {lead} |")
    return rows


def eval_loss_at(rows: list[dict], step: int) -> float:
    """The validation subset's loss a run's metrics rows logged at its evaluation of that step."""
    return next(r["val_loss"] for r in rows if r["kind"] == "eval" and r["step"] == step)


def train_val_gaps(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, the validation subset's loss less the training loss logged at that step) at each evaluation of a run's
    metrics rows that has a training line at its step (the closing one has none)."""
    train = {r["step"]: r["ce"] for r in rows if r["kind"] == "train"}
    return [(r["step"], r["val_loss"] - train[r["step"]]) for r in rows if r["kind"] == "eval" and r["step"] in train]


def seed_variant(speed: dict) -> dict:
    """The seed's own script among a bench/train_speed.py record's variants."""
    return next(v for v in speed["variants"] if v["variant"].startswith("seed's script"))


def speed_drift(pairs: list[dict], speeds: list[dict]) -> str:
    """Where bench/train_speed.py ran more than once on a machine of the pairs: the seed script's tokens/s in each run and
    the steps 30 minutes buy at it, since the seed's side runs the steps of one measurement."""
    import statistics

    lines = []
    for cpu in dict.fromkeys(p["cpu"] for p in pairs):
        seeds = [seed_variant(r) for r in speeds if r["cpu"] == cpu]
        if len(seeds) > 1:
            runs = ", ".join(f"{v['tok_s']:,.0f} tok/s ({int(30 * 60 / statistics.median(v['step_seconds']))} steps)" for v in seeds)
            used = sorted({p["seed_steps"] for p in pairs if p["cpu"] == cpu})
            lines.append(f"- {where(cpu)}: {runs}; its runs above took "
                         f"{', '.join(map(str, used))} steps.")
    probes = []
    for cpu in dict.fromkeys(p["cpu"] for p in pairs):
        said = [(p["name"], p["seed"], p["probe_tok_s"]) for p in pairs if p["cpu"] == cpu and p["probe_tok_s"]]
        if len(said) > 1 and max(t for *_, t in said) > 1.1 * min(t for *_, t in said):
            runs = ", ".join(f"`{name}` seed {seed} {tok_s:,} tok/s" for name, seed, tok_s in said)
            probes.append(f"- {where(cpu)}: {runs}.")
    if not lines and not probes:
        return ""
    text = ""
    if lines:
        text += ("\nThe machine's speed moves between runs, and the seed's side runs the steps of one measurement. Where "
                 "`bench/train_speed.py` ran more than once, the seed's script measured (in file order, with the whole steps 30 minutes buy at "
                 "that speed):\n\n" + "\n".join(lines) + "\n")
    if probes:
        text += ("\nWhere our runs on one machine differ by more than 10 % in the speed their probe measured as they started (the "
                 "`short run:` line `flashlm-train` printed), the machine ran slower in one than in the other: "
                 "on a slower machine the same budget buys fewer steps:\n\n" + "\n".join(probes) + "\n")
    return text


def reach_section(pairs: list[dict], speeds: list[dict], recipes: list[dict]) -> str:
    """What 25 % below the seed's script asks on each machine of the pairs, against the tokens 30 minutes buy there
    (measured, and at the fp32 GEMM roof from its results/avx2/train_speed_*.json) and the lowest bits per byte any
    recipe run on the same data reached (results/recipes/, any CPU, any length)."""
    runs = [r for r in recipes if r["last_bpb"] is not None and r["data"] == "data/tinystories-plus"]
    if not pairs or not runs:
        return ""
    low = min(runs, key=lambda r: r["last_bpb"])
    by_cpu = {s["cpu"]: s for s in speeds}  # a machine's last measurement
    lines = []
    for cpu in dict.fromkeys(p["cpu"] for p in pairs):
        mine = [p for p in pairs if p["cpu"] == cpu]
        seed_bpb = max(p["seed_bpb"] for p in mine)  # the seed's weaker run: the bar at its easiest
        line = (f"- {cpu}: at most **{(1 - BAR_LEAD) * seed_bpb:.4f}** ({1 - BAR_LEAD} × {seed_bpb:.4f}, the seed's weaker run here). Our 30 minutes "
                f"bought {max(p['tokens_seen'] for p in mine) / 1e6:.1f}M tokens at most")
        speed = by_cpu.get(cpu)
        if speed:
            roof = speed["gemm_peak_gflops"]["fp32"]
            roof_tokens = roof * 1e9 / speed["flops_per_token"] * 30 * 60
            line += (f"; a step running wholly at the machine's fp32 GEMM roof ({roof:.0f} GFLOP/s, "
                     f"{speed['flops_per_token'] / 1e6:.1f} MFLOP a token) would buy {roof_tokens / 1e6:.1f}M")
            within = [r for r in runs if r["tokens"] <= roof_tokens]
            if within:
                best = min(within, key=lambda r: r["last_bpb"])
                lead = 1 - best["last_bpb"] / seed_bpb
                line += (f". The lowest run on no more tokens than that, `{best['name']}` ({best['tokens'] / 1e6:.1f}M tokens, "
                         f"{best['last_bpb']:.4f}), would lead by {lead:.1%}: the bar is "
                         f"{'within' if lead >= BAR_LEAD else 'beyond'} what speed alone can give here")
        lines.append(line + f"; the lowest run of all would lead by {1 - low['last_bpb'] / seed_bpb:.1%}.")
    return f"""
## What 25 % asks

The bar moves with the machine: the faster the CPU, the more steps the seed's script gets in 30 minutes and the lower
its figure. The lowest whole-validation figure of any recipe run on this data, on any CPU and at any length, is
**{low['last_bpb']:.4f}** bits per byte (`{low['name']}`: {low['steps']:,} steps, {low['tokens'] / 1e6:.1f}M tokens, {low['cpu']}).
25 % below the seed's script asks for:

{chr(10).join(lines)}

Where the bar is beyond speed, it needs a recipe that learns more from each token of this 1.5M-token train split
than any found so far.
"""


def gemm_section() -> str:
    """The step's GEMMs through each BLAS (bench/step_gemm.py's record), or nothing before it ran."""
    found = sorted(RESULTS.glob("step_gemm_*.json"))
    if not found:
        return ""
    g = json.loads(found[-1].read_text())
    backends = list(g["roof_gflops"])
    head = "| GEMM (rows x k) @ (k x n) | " + " | ".join(f"{b} GFLOP/s" for b in backends) + " |"
    lines = [head, "|---|" + "---|" * len(backends)]
    for name, r in g["shapes"].items():
        lines.append(f"| {name}: ({r['m']} x {r['k']}) @ ({r['k']} x {r['n']}) | " + " | ".join(f"{r[b]:.0f}" for b in backends) + " |")
    steps = ["| step | --gemm torch tok/s | --gemm numpy tok/s | numpy / torch | achieved GFLOP/s (best) |", "|---|---|---|---|---|"]
    roof = max(g["roof_gflops"].values())
    for label, r in g["steps"].items():
        best = max(r["gflops"].values())
        steps.append(f"| {label} | {r['tok_s']['torch']:,.0f} | {r['tok_s']['numpy']:,.0f} | {r['tok_s']['numpy'] / r['tok_s']['torch']:.2f}x "
                     f"| {best:.0f} ({100 * best / roof:.0f} % of the {roof:.0f} roof) |")
    roofs = ", ".join(f"{b} {v:.0f}" for b, v in g["roof_gflops"].items())
    return f"""
## The step's GEMMs on this CPU

`python bench/step_gemm.py` ({g['cpu']}; flags {', '.join(g['cpu_flags'])}; {g['threads']} threads; torch {g['torch']},
{g['blas']}; commit `{g['commit'][:10]}`). The fp32 GEMM roof, a 2048³ matmul: {roofs} GFLOP/s.

{chr(10).join(lines)}

The whole optimizer step, both GEMM paths interleaved on the same batches:

{chr(10).join(steps)}

`--gemm numpy` is opt-in: where numpy's GEMMs win one by one, its OpenBLAS threads and torch's OpenMP threads share
the cores through a step, and the whole step can lose, as it does here. `--gemm auto` times a `--minutes` run's step
both ways before it starts and keeps numpy's only when it is clearly faster.
"""


def table(args) -> None:
    """Write results/avx2/budget_pairs.json and docs/avx2-training.md from results/; with --check, only say whether
    the committed ones are what results/ gives (exit 1 naming the stale file)."""
    pairs, page = page_text()
    files = {RESULTS / "budget_pairs.json": json.dumps(pairs, indent=1) + "\n", DOC: page}
    if args.check:
        stale = [str(path.relative_to(ROOT)) for path, text in files.items() if not path.is_file() or path.read_text() != text]
        if stale:
            raise SystemExit(f"stale: {', '.join(stale)}; run python bench/budget_pair.py table")
        return
    for path, text in files.items():
        path.write_text(text)
    print(page)


def page_text() -> tuple[list[dict], str]:
    records, recipes = load_results()
    pairs, rows = pair_rows(records)
    search = search_rows(pairs, recipes)
    by_name = {r["name"]: r for r in recipes}
    epoch_gain = 1 - by_name["avx2q-epoch-2228-s1337"]["last_bpb"] / by_name["avx2q-short-2228-s1337"]["last_bpb"]
    mb16, mb8 = (by_name[f"avx2q-zen1-{n}-s1337"]["last_bpb"] for n in ("mb16-691", "mb8-wu400-1382"))
    zen3_pair = next(p for p in pairs if p["name"] == "short-run")  # the Zen 3: its seed's 30 minutes
    zen3 = {s: by_name[f"avx2q-epoch-1165-s{s}"]["last_bpb"] for s in (1337, 7)}
    zen3_leads = " and ".join(f"{1 - b / zen3_pair['seed_bpb']:.2%}" for b in zen3.values())
    zen3_epoch = 1 - zen3[1337] / by_name["avx2q-dropout0-mb16-1165-s1337"]["last_bpb"]
    zen3_mb8 = by_name["avx2q-epoch-mb8-wu400-2330-s1337"]["last_bpb"]
    zen3_lr3 = by_name["avx2q-epoch-lr3e-3-1165-s1337"]["last_bpb"]
    zen3_wu400 = by_name["avx2q-epoch-wu400-1165-s1337"]["last_bpb"]
    worse = {n: by_name[f"avx2q-{n}-2228-s1337"]["last_bpb"] / by_name["avx2q-epoch-2228-s1337"]["last_bpb"] - 1
             for n in ("epoch-dropout0.1", "wdmat1.0", "epoch-decay0.5", "wdmat1.0-decay0.5", "epoch-lr3e-3")}
    curves = {n: read_metrics(ROOT / "results" / "recipes" / f"avx2q-{n}-2228-s1337") for n in ("epoch", "epoch-decay0.5")}
    at_2000 = {n: eval_loss_at(rows, 2000) for n, rows in curves.items()}
    gaps = train_val_gaps(curves["epoch"])
    at_500 = [eval_loss_at(rows, 500) for rows in curves.values()]
    speeds = [r for r in records if "variants" in r]  # bench/train_speed.py's records, in file order
    seeds = [r for r in records if r.get("side") == "seed"]
    below_two: dict[tuple[str, int], list[str]] = {}  # (machine, threads): the torch seeds that ran on fewer than 2 threads there
    for r in seeds:
        if r.get("threads", 2) != 2:
            below_two.setdefault((kind_name(r["cpu"]), r["threads"]), []).append(str(r["torch_seed"]))
    fewer = [f"torch seed{'s' * (len(ts) > 1)} {' and '.join(ts)} on {cpu} ran on {n} thread{'s' * (n != 1)}" for (cpu, n), ts in below_two.items()]
    one_thread = f" ({'; '.join(fewer)}, beside a run by steps)" if fewer else ""
    machines = "\n".join(f"- {cpu}: ISA flags {', '.join(flags)}" for cpu, flags in dict((p["cpu"], p["cpu_flags"]) for p in pairs).items())
    page = f"""# Training on a CPU without native bf16: the 30-minute bar

<!-- generated by python bench/budget_pair.py table from results/; do not edit by hand -->

On a CPU without AVX-512 or native bf16, 30 minutes of `flashlm-train` buy far fewer steps than the recipe search
assumed. This page measures the default there against the seed's own script.

Each row pairs one `flashlm-train --minutes 30` run on 2 threads with one run of the seed's own script
(`train_v10_fsp.py`, unchanged) for the optimizer steps its measured speed buys in 30 minutes on the same machine
(`bench/train_speed.py` on that machine, `results/avx2/train_speed_*.json`), scored at that last step. Both are
scored on the whole validation split in bits per byte: ours by `flashlm-train`'s closing `flashlm-eval`, the seed's by
`../shared/seed/eval_seed_checkpoint.py`. Lead = 1 − ours / seed's, to two decimals, so that a run just short of
25 % never reads as 25.0 %. "Budget used" is wall time from the probe to the last checkpoint written, over the budget.

Where no AVX2-only CPU was at hand, both sides ran on a CPU with AVX-512 under torch's AVX2 cap
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`, named in the CPU column); under it
`flashlm-train` picks fp32 as it does on a CPU without native bf16. A run pairs only with the seed's script on the same
CPU under the same cap. Machines of one CPU kind differ in speed from one host to the next (below), so a run made with
`--against NAME` pairs only with the seed's runs of that name, measured on the same host in the same session, and
those meet no other run. The machines, each on 2 threads with nothing else running:

{machines}

A model name with no model number in it, as `AMD EPYC` under a hypervisor, now carries its x86 family and model
(`flashlm_core.cpu.with_generation`), since one name covers several generations; records made before that say only
`AMD EPYC`: that machine is the issue's Zen 3, whose 2-thread fp32 GEMM roof in its `train_speed` record is more than
a 2-core Zen 1 can reach.

The seed's torch seed 0 is `run_seed_by_steps.py` as it is; the bar asks for two seeds a machine. The seed's side runs
by steps, so its thread count changes how long it takes, not what it scores{one_thread}.

| CPU | run | short run | seed | steps | tokens | budget used | bits/byte | seed's torch seed | seed's steps | seed's bits/byte | lead |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
{speed_drift(pairs, speeds)}
Made by `python bench/budget_pair.py seed ...` and `python bench/budget_pair.py default --seed S`, or all of one machine's
runs in order, then this page, by `python bench/budget_pair.py host --name NAME` (about two hours); commands, commits and
the lines `flashlm-train` printed are in each `results/avx2/NAME.json`, the training curves beside them. The
budget used shows the clock at work: the schedule follows the time spent, so the run ends on its budget. "Short run"
says whether a run trained the short-run recipe (below): on or off as its probe decided from the speed it measured,
with the threshold its budget fell under (under `recipes.TINY_RUN_TOKENS`, 4M, also 8 windows a step), or forced by
`--short-run`. A probe near `recipes.SHORT_RUN_TOKENS` falls either side of it as the machine's speed
moves between runs; `--short-run` fixes the choice.

## The recipe at this length

The default recipe by `--max-steps` set to the steps its measured speed buys in 30 minutes on the AVX2-only CPU
(from its tokens/s in `bench/train_speed.py`, so a busy machine cannot change it), in fp32 as it trains there:
`bash bench/recipe_run.sh NAME FLAGS`, results in `results/recipes/NAME/`. A run by steps gives the same model on any
CPU up to rounding, so the search also ran on other machines (`--no-bf16`); the CPU column names each, and the
`avx2q-default-xeon` row is the default itself there, the reference for the rows beside it. "Lead" is against the
seed's script at its 30 minutes on the machine whose 30 minutes the row's tokens match (within {LENGTH_MATCH:.0%}): the
AVX2-only CPU's, or the capped Xeon's (there against the seed's weaker run), so only rows of those lengths have one.

The `short-run` pair above ran the short-run recipe of that time (a smaller batch of 8 × 256, no dropout, 100 warm-up
steps), which trained worse than the default at this length. One knob at a time, by steps, dropout is the lever: no
dropout at all trains best here (`avx2q-dropout0`). A longer decay and a higher peak lr with a shorter warm-up trail
the default itself; on top of dropout 0, a shorter warm-up and Muon for the blocks' matrices (`--optimizer muon`)
both trail dropout 0 alone; so do a lower peak lr (1.2e-3) and residual output projections started scaled by 1 / sqrt(2 x layers) or at zero (`--proj-init`), while a longer warm-up (400 steps) is level with it. At this length the run sees the 1.5M-token train split about
three times, too few for dropout's regularisation to pay for what it slows. At 2,400 steps (the `-2400` rows, just
under the threshold below: about six passes) the two are level (within the 0.2–0.5 % two seeds of one recipe differ
by), so no dropout costs nothing up to there. Without dropout, one micro-batch of 16 covers the same windows with the
same gradient as four of 4 (`bench/micro_batch_grads.py`) in a faster step, and by steps it trains level with them
(`avx2q-dropout0-mb16`); the same recipe with another seed (`avx2q-dropout0-1165-s7`) shows how far two seeds differ at
this length. Under the AVX2 cap on the Xeon, 30 minutes buy about twice the tokens; at that length, by steps at equal
wall clock (the batch sizes' tokens/s are the short-run rows of `results/avx2/train_speed_xeon_avx2cap_fp32_tcmalloc_rerun.json`),
half the tokens a step with twice the steps trains worse than the 16 windows of the default (`avx2q-mb8`, and with
400 warm-up steps, the same warm-up in tokens, `avx2q-mb8-wu400`), and so does twice the tokens a step with half the
steps (`avx2q-mb32`): 16 windows a step stay. At those 2,228 steps, against the same recipe by steps
(`avx2q-short-2228`): AdamW weight decay 0.5 and 1.0 train worse than 0.1 (AdamW here decays every parameter, the
tied embedding and the norms' gains too), and a peak lr of 3e-3 and β2 0.99 are level with it (within what two seeds
differ by). The lever is the data order: drawn uniformly with replacement, over about six passes one part of the split is
seen three times and another nine (a count's 10th and 90th percentile); with `--sampling epoch` each pass is one shuffled tiling of the train
split at a fresh offset, every window seen as often as the next, and the same run ends {epoch_gain:.1%} lower in bits
per byte (`avx2q-epoch-2228`). So the short-run recipe is now dropout 0, the step as one micro-batch of 16 and epoch
sampling (`recipes.SHORT_RUN`), and it is on by default: a fresh `--minutes` run whose probe says the budget buys under
`recipes.SHORT_RUN_TOKENS` tokens on this machine takes it and says so (`--no-short-run` keeps dropout 0.1).

Six passes over so small a split let the model learn its training text: in `avx2q-epoch-2228` the training batches'
loss falls below the validation subset's by {", ".join(f"{g:.2f} nats at step {n:,}" for n, g in gaps)}. Held
back from that, on top of the short-run recipe at the same 2,228 steps, it trains worse all the same: dropout 0.1
(`avx2q-epoch-dropout0.1`) ends {worse["epoch-dropout0.1"]:.1%} higher in bits per byte, and AdamW weight decay 1.0 on
the matrices alone (`--weight-decay-on matrices`: the 2-D weights, the tied embedding among them, and not the norms'
gains; `avx2q-wdmat1.0`) {worse["wdmat1.0"]:.1%} higher. Both trail at every evaluation: at this length holding the model
back costs more than the overfitting it prevents. Nor does a longer decay help: over the last half of the run instead
of the last fifth (`--decay-frac 0.5`, `avx2q-epoch-decay0.5`) the validation subset is lower at step 2,000
({at_2000["epoch-decay0.5"]:.3f} against {at_2000["epoch"]:.3f}, where the reference is still decaying), and the run ends
{worse["epoch-decay0.5"]:.1%} higher; with the weight decay of `avx2q-wdmat1.0` (`avx2q-wdmat1.0-decay0.5`) it ends
{worse["wdmat1.0-decay0.5"]:.1%} higher, {1 - (1 + worse["wdmat1.0-decay0.5"]) / (1 + worse["wdmat1.0"]):.1%} below that
weight decay with the default fifth. A peak lr of 3e-3 (`avx2q-epoch-lr3e-3`), level with 2e-3 without epoch
sampling, is level with it here too ({-worse["epoch-lr3e-3"]:.1%} lower, less than two seeds differ by). These five ran on the Zen 5 EPYC (uncapped, by steps), the reference on the
Xeon: runs by steps on two CPUs differ by rounding (at step 500, where the decay-0.5 run is still the reference's
recipe, their validation subsets differ by {abs(at_500[0] - at_500[1]):.4f} nats).

On the Zen 1 EPYC, 30 minutes of 16-window steps buy under 3M tokens, about two passes over the split, and a step of 8 windows trains
about as many tokens a second as one of 16 (the short-run rows of its `train_speed` records). There, by steps at the
2.83M tokens of its 30 minutes (1 thread each), 8 windows a step for twice the steps with 400 warm-up steps (the same
warm-up in tokens) end at {mb8:.4f} against {mb16:.4f} for the 16 windows (`avx2q-zen1-*`), {1 - mb8 / mb16:.1%} lower:
one seed, less than two seeds of one recipe differ by, and the opposite of what the half batch did at the Xeon's
9M tokens. A budget under `recipes.TINY_RUN_TOKENS` now trains that smaller batch (`recipes.TINY_RUN`, with an
evaluation every 250 steps so that evaluations cost what they did).

Between the two lengths, at the 1,165 steps (4.77M tokens) the default's measured speed buys in 30 minutes on the
issue's Zen 3 EPYC (the `AMD EPYC` without family and model above; `avx2-default-noshort-1165`), the short-run recipe of today by steps ends at {zen3[1337]:.4f} and
{zen3[7]:.4f} (seeds 1337 and 7, `avx2q-epoch-1165`), epoch sampling {zen3_epoch:.1%} below the same run without it
(`avx2q-dropout0-mb16-1165`): {zen3_leads} below the seed's {zen3_pair['seed_steps']} steps there
({zen3_pair['seed_bpb']:.4f}, its one torch seed). On a CPU of that speed the bar is at its edge, and a pair can fall
either side of it. The tiny tier's batch does not pay there: 8 windows a step for twice the steps with 400 warm-up
steps (`avx2q-epoch-mb8-wu400-2330`) ends at {zen3_mb8:.4f}, {zen3_mb8 / zen3[1337] - 1:.1%} above 16 windows with the
same seed, so `recipes.TINY_RUN_TOKENS` stays below this length. Nor does a peak lr of 3e-3 (`avx2q-epoch-lr3e-3-1165`):
{zen3_lr3 / zen3[1337] - 1:.1%} above 2e-3 with the same seed; 400 warm-up steps (`avx2q-epoch-wu400-1165`) end level with
200 ({zen3_wu400:.4f}). These ran by steps on the Zen 5 EPYC (uncapped, 2 threads); how many tokens today's faster
16-window step buys in 30 minutes on the Zen 3 itself was not measured, as no such CPU was at hand.
Every row but the `-s7` ones trained with seed 1337.

| run | flags | CPU, threads | steps | tokens | bits/byte (last) | lead |
|---|---|---|---|---|---|---|
{chr(10).join(search)}
{reach_section(pairs, speeds, recipes)}{gemm_section()}"""
    return pairs, page


def seed_steps_bought(speed: dict, *, minutes: float) -> int:
    """The whole optimizer steps the seed's script takes in MINUTES at the tokens/s bench/train_speed.py measured for it."""
    return int(minutes * 60 * seed_variant(speed)["tok_s"] / SEED_STEP_TOKENS)


def host_files(args) -> dict[str, Path]:
    """The records `host` writes for one machine, by step: the speed, then ours by seed, then the seed's by torch seed."""
    return {"speed": RESULTS / f"train_speed_{args.name}.json",
            **{f"default {s}": RESULTS / f"{args.name}-s{s}.json" for s in args.seeds},
            **{f"seed {t}": RESULTS / f"seed-{args.name}-s{t}.json" for t in args.torch_seeds}}


def host_done(files: dict[str, Path], *, resume: bool, cpu: str) -> set[str]:
    """The steps of host_files whose records exist: refused without --resume, and with it refused where another machine
    wrote one (a pair never crosses machines), so that a committed record is never overwritten by accident."""
    found = [(step, path) for step, path in files.items() if path.is_file()]
    if found and not resume:
        raise SystemExit(f"{found[0][1].relative_to(ROOT)} exists: pass --resume to go on from this machine's runs, or choose another --name")
    for _, path in found:
        wrote = json.loads(path.read_text())["cpu"]
        if wrote != cpu:
            raise SystemExit(f"{path.relative_to(ROOT)} was written on {wrote}, this is {cpu}: "
                             f"a pair never crosses machines; choose another --name")
    return {step for step, _ in found}


def host_checks(args) -> None:
    """What the steps need, checked before the first starts: the seed's script and helpers, the corpus, tcmalloc."""
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.torch_seeds)) != len(args.torch_seeds):
        raise SystemExit(f"--seeds {args.seeds} / --torch-seeds {args.torch_seeds}: give each seed once")
    needed = [SEED / n for n in ("train_v10_fsp.py", "prepare_seed_data.py", "run_seed_by_steps.py", "eval_seed_checkpoint.py")]
    for path in [*needed, CORPUS / "train.txt", VALID, Path(TCMALLOC)]:
        if not path.is_file():
            raise SystemExit(f"{path} is missing: the pairs need the seed's folder and the corpus beside the project "
                             f"(../shared/), and tcmalloc (make setup)")


def seed_workdir(root: Path, torch_seed: int) -> Path:
    """A folder the seed's script runs in, as its README sets one up: the script beside its data_v10/ (made once under
    ROOT, then copied, so the two torch seeds train on the same tokens)."""
    data = root / "data_v10"
    if not (data / "meta.json").is_file():
        data.mkdir(parents=True, exist_ok=True)
        run([sys.executable, str(SEED / "prepare_seed_data.py"), str(CORPUS), str(data)])
    work = root / f"s{torch_seed}"
    if not (work / "data_v10" / "meta.json").is_file():
        shutil.copytree(data, work / "data_v10", dirs_exist_ok=True)
    shutil.copy(SEED / "train_v10_fsp.py", work / "train_v10_fsp.py")
    return work


def host(args) -> None:
    """One machine's pairs in one session: train_speed, our runs one at a time, the seed's runs side by side, the table."""
    cpu = cpu_kind()
    host_checks(args)
    files = host_files(args)
    done = host_done(files, resume=args.resume, cpu=cpu)
    me = [sys.executable, str(Path(__file__).resolve())]
    if not (ROOT / args.data / "meta.json").is_file():
        run([str(BIN / "flashlm-prepare"), str(CORPUS), "--out", args.data], cwd=ROOT)
    if "speed" not in done:
        subprocess.run([sys.executable, str(ROOT / "bench" / "train_speed.py"), "--no-bf16", "--steps", "5", "--threads", str(args.threads),
                        "--data", args.data, "--json", str(files["speed"])], cwd=ROOT, env={**os.environ, "LD_PRELOAD": TCMALLOC}, check=True)
    steps = seed_steps_bought(json.loads(files["speed"].read_text()), minutes=args.minutes)
    print(f"{cpu}: the seed's script buys {steps} steps in {args.minutes:g} minutes; our runs take about "
          f"{len(args.seeds) * (args.minutes + 2):.0f} minutes, then the seed's {len(args.torch_seeds)} side by side", flush=True)
    for s in args.seeds:
        if f"default {s}" not in done:
            subprocess.run([*me, "default", "--seed", str(s), "--name", args.name, "--against", f"seed-{args.name}", "--minutes", str(args.minutes),
                            "--threads", str(args.threads), "--data", args.data], cwd=ROOT, check=True)
    work = Path(args.workdir or f"/tmp/budget-pair-{args.name}")
    todo = [t for t in args.torch_seeds if f"seed {t}" not in done]
    running = [subprocess.Popen([*me, "seed", "--torch-seed", str(t), "--steps", str(steps), "--workdir", str(seed_workdir(work, t)),
                                 "--threads", "1", "--name", f"seed-{args.name}"], cwd=ROOT) for t in todo]
    if any(p.wait() for p in running):
        raise SystemExit(f"a seed-side run failed (its error is above); its workdir is under {work}")
    subprocess.run([*me, "table"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    mine = [p for p in pair_rows(load_results()[0])[0] if p["name"] == args.name]
    for p in mine:
        print(f"seed {p['seed']} against torch seed {p['torch_seed']}: {p['default_bpb']:.4f} against {p['seed_bpb']:.4f}, "
              f"lead {p['lead']:.2%}, budget used {p['budget_used']:.1%}")
    met = len(mine) == len(args.seeds) and all(p["lead"] >= BAR_LEAD and p["budget_used"] >= BAR_BUDGET for p in mine)
    if args.minutes != 30:
        print(f"a trial of {args.minutes:g} minutes: the bar is for 30; delete its records ({args.name}-s*, seed-{args.name}-s*, "
              f"train_speed_{args.name}.json under results/avx2/) and run python bench/budget_pair.py table")
    else:
        print(f"the bar ({BAR_LEAD:.0%} lead, {BAR_BUDGET:.0%} of the budget, every pair) is {'met' if met else 'not met'} on {cpu}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="side", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--torch-seed", type=int, default=0)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--workdir", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--name", default="seed", help="the results file's name, NAME-sTORCH_SEED.json: one a machine")
    s.add_argument("--score-only", action="store_true", help="score WORKDIR's finished run (its run.log and fsp_best.pt)")
    d = sub.add_parser("default")
    d.add_argument("--seed", type=int, default=1337)
    d.add_argument("--minutes", type=float, default=30)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--data", default="data/tinystories-plus")
    d.add_argument("--name", default="default")
    d.add_argument("--against", help="pair only with the seed-side runs of this --name (those of the same session and host)")
    d.add_argument("flags", nargs="*", help="more flashlm-train flags, after --")
    h = sub.add_parser("host", help="one machine's pairs in one session, then the table")
    h.add_argument("--name", required=True, help="the machine's records: NAME-sSEED.json, seed-NAME-sTORCH_SEED.json, train_speed_NAME.json")
    h.add_argument("--seeds", type=int, nargs="+", default=[1337, 7])
    h.add_argument("--torch-seeds", type=int, nargs="+", default=[0, 1])
    h.add_argument("--minutes", type=float, default=30, help="30 for the bar; a trial's records pair on the page too, so delete them")
    h.add_argument("--threads", type=int, default=2)
    h.add_argument("--data", default="data/tinystories-plus")
    h.add_argument("--workdir", help="where the seed's script runs (default /tmp/budget-pair-NAME)")
    h.add_argument("--resume", action="store_true", help="skip the steps whose records this machine already wrote")
    t = sub.add_parser("table")
    t.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page or budget_pairs.json is stale")
    args = ap.parse_args()
    {"seed": seed_side, "default": default_side, "host": host, "table": table}[args.side](args)


if __name__ == "__main__":
    main()
