"""Click commands flashlm-prepare, flashlm-train, flashlm-eval: parse, build configs, call the library."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from flashlm.recipes import RECIPES, TRAIN_HELP, TrainConfig, recipe_config
from flashlm_core import artifacts as A
from flashlm_core.clikit import dataclass_options, guarded, require_extra
from flashlm_core.config import model_preset
from flashlm_core.errors import ConfigError
from flashlm_core.generation import GENERATION_DEFAULTS, SAMPLE_PROMPTS


@click.command()
@click.argument("source")
@click.option("--out", "out_dir", default=A.DATA_DIR, show_default=True, help="Folder for tokenizer.json, train.bin, val.bin, meta.json.")
@click.option("--vocab-size", default=4096, show_default=True, help="BPE vocabulary to train (ignored with --tokenizer).")
@click.option("--tokenizer", "tokenizer_path", default=None, help="Use this tokenizer.json instead of training one.")
@click.option("--val", default=None, help="Validation file, when SOURCE is a single train file.")
@click.option("--text-field", default="text", show_default=True, help="Text column of .jsonl/.parquet/hub data.")
@click.option("--num-proc", type=int, default=None, help="Tokenizer threads (default: all cores).")
@click.option("--force", is_flag=True, help="Redo the work even if meta.json matches the inputs.")
@guarded
def prepare_cmd(source, out_dir, vocab_size, tokenizer_path, val, text_field, num_proc, force):
    """Tokenize SOURCE (a .txt/.jsonl/.parquet file or folder, or a hub name like roneneldan/TinyStories)."""
    require_extra("train")
    from flashlm.data import prepare

    meta = prepare(source, out_dir, vocab_size=vocab_size, tokenizer_path=tokenizer_path, val=val,
                   text_field=text_field, num_proc=num_proc, force=force, progress=sys.stderr.isatty())
    verb = "unchanged (inputs match meta.json)" if meta["reused"] else "written"
    took = "" if meta["reused"] else f" in {meta['timing']['total']:.1f} s"
    click.echo(f"{out_dir}: {verb}; vocab {meta['vocab_size']}, train {meta['tokens']['train']:,} tokens, "
               f"validation {meta['tokens']['validation']:,} tokens{took}")


@click.command()
@click.option("--data", "data_dir", default=A.DATA_DIR, show_default=True, help="Folder written by flashlm-prepare.")
@click.option("--out", "out_dir", default="runs/default", show_default=True, help="Run folder: last/, best/, metrics.jsonl.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True, help="Named set of training knobs that the flags below override.")
@click.option("--preset", default=None, help="Model preset: v10-fsp (the default) or tiny; not with --init-from, whose checkpoint sets the model.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last, with its saved settings (flags given now override them).")
@click.option("--force", is_flag=True, help="Replace a run already in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@dataclass_options(TrainConfig, skip=("recipe",), helps=TRAIN_HELP)
@guarded
def train_cmd(data_dir, out_dir, recipe, preset, resume, force, quiet, **knobs):
    """Train FlashLM (runs DDP when started under torchrun)."""
    require_extra("train")
    from flashlm.checkpoint import load_checkpoint
    from flashlm.data import TokenData
    from flashlm.evaluate import perplexity
    from flashlm.train import train

    if knobs.get("init_from") and preset is not None:
        raise ConfigError("--preset and --init-from both set the model: drop --preset (the checkpoint's architecture is used)")
    tc = recipe_config(recipe, **knobs)
    if resume and Path(out_dir, "last").is_dir():
        # continue the run as it was configured; only the flags given now change it (e.g. a larger --max-steps)
        from flashlm.checkpoint import read_config

        saved = read_config(Path(out_dir, "last"))["train"]
        tc = dataclasses.replace(saved, **{k: v for k, v in knobs.items() if v is not None})
    summary = train(data_dir, out_dir, model_preset(preset or "v10-fsp"), tc, resume=resume, force=force, progress=not quiet,
                    log=lambda line: click.echo(line, err=True))
    if summary["rank"] == 0:
        data = TokenData.open(data_dir, verify=False)  # train() verified it
        token_bytes = data.token_bytes()
        for name in ("last", "best"):
            model, _ = load_checkpoint(f"{out_dir}/{name}")
            summary[f"val_full_{name}"] = perplexity(model, data.val, seq_len=tc.seq_len, token_bytes=token_bytes)
        click.echo(json.dumps(summary, indent=2))
    if summary["signal"] is not None:
        sys.exit(128 + summary["signal"])


@click.command()
@click.argument("seed_checkpoint")
@click.option("--tokenizer", "tokenizer_path", required=True, help="The tokenizer.json the seed trained with (its data_v10/tokenizer.json).")
@click.option("--out", "out_dir", required=True, help="Checkpoint folder to write (model.safetensors, config.json, tokenizer.json).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@guarded
def import_cmd(seed_checkpoint, tokenizer_path, out_dir, force):
    """Import a checkpoint of the seed's train_v10_fsp.py (fsp_best.pt, best.pt or a bare state_dict) as a FlashLM
    checkpoint folder that flashlm-eval, flashlm-export and flashlm-train --init-from take."""
    require_extra("train")
    from flashlm.importer import import_seed

    provenance = import_seed(seed_checkpoint, tokenizer=tokenizer_path, out=out_dir, force=force)
    click.echo(f"{out_dir}: imported {seed_checkpoint} (step {provenance['step']}, the seed's val_ppl {provenance['seed_val_ppl']}, "
               f"sha256 {provenance['sha256'][:12]})")


@click.command()
@click.argument("checkpoint_dir")
@click.option("--data", "data_dir", default=A.DATA_DIR, show_default=True, help="Prepared data folder whose validation split is scored.")
@click.option("--seq-len", type=int, default=None, help="Window length (default: the checkpoint's training seq_len).")
@click.option("--samples", type=int, default=0, show_default=True, help="Also print N sampled stories per prompt (the generation defaults: temperature 0.8, top-p 0.9).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed of the first --samples story (the next ones count up).")
@guarded
def eval_cmd(checkpoint_dir, data_dir, seq_len, samples, seed):
    """Token-weighted loss, perplexity and bits per byte of CHECKPOINT_DIR on the whole validation split."""
    require_extra("train")
    from flashlm.checkpoint import load_checkpoint
    from flashlm.data import TokenData
    from flashlm.evaluate import perplexity

    model, cfg = load_checkpoint(checkpoint_dir)
    data = TokenData.open(data_dir)
    result = perplexity(model, data.val, seq_len=seq_len or cfg["train"].seq_len, token_bytes=data.token_bytes())
    click.echo(json.dumps({"checkpoint": checkpoint_dir, "step": cfg.get("step"), **result}))
    if samples:
        from tokenizers import Tokenizer

        from flashlm.generate import generate

        tok = Tokenizer.from_file(f"{checkpoint_dir}/tokenizer.json")
        eot = tok.token_to_id(A.EOT)
        for prompt in SAMPLE_PROMPTS:
            for i in range(samples):
                ids = tok.encode(prompt).ids
                new = generate(model, ids, max_new_tokens=GENERATION_DEFAULTS["max_new_tokens"], seed=seed + i, eos_id=eot)
                click.echo(f"\n--- {prompt!r} (seed {seed + i})\n{tok.decode(ids + new)}")


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out_path", default="loss_curves.png", show_default=True, help="PNG file to write (replaced atomically).")
@click.option("--title", default="FlashLM training", show_default=True, help="Title above the curves.")
@guarded
def plot_cmd(runs, out_path, title):
    """Plot loss curves from RUNS (run folders or metrics.jsonl files; LABEL=PATH to name one)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from flashlm_core.errors import MissingExtraError

        raise MissingExtraError("flashlm-plot needs matplotlib: pip install 'flashlm[train]'") from None
    from flashlm.plot import plot_runs, read_metrics

    series = {}
    for spec in runs:
        label, _, path = spec.rpartition("=")
        series[label or path] = read_metrics(path)
    plot_runs(series, out_path, title=title)
    click.echo(f"wrote {out_path}")
