"""flashlm-run: stream a story from an exported model (onnxruntime only)."""
from __future__ import annotations

import json
import sys
import time

import click

from flashlm_core.clikit import guarded
from flashlm_core.errors import ConfigError
from flashlm_core.generation import GENERATION_DEFAULTS as D

MAX_PROMPT_FILE = 1 << 30  # bytes: a larger prompt file is a mistake (only the last 256 tokens are read)


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """--prompt or the UTF-8 text of --prompt-file ('-' = standard input), checked before any model work."""
    if prompt is not None and prompt_file is not None:
        raise ConfigError("give --prompt or --prompt-file, not both")
    if prompt_file is None:
        return prompt or ""
    try:
        if prompt_file == "-":
            data = sys.stdin.buffer.read(MAX_PROMPT_FILE + 1)
        else:
            with open(prompt_file, "rb") as f:
                data = f.read(MAX_PROMPT_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"--prompt-file {prompt_file}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--prompt-file {prompt_file}: is a folder; give a text file") from None
    if len(data) > MAX_PROMPT_FILE:
        raise ConfigError(f"--prompt-file {prompt_file}: larger than {MAX_PROMPT_FILE >> 20} MB; give the end of the text you mean")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--prompt-file {prompt_file}: not UTF-8 text (byte {data[exc.start:exc.start + 1]!r} at {exc.start}); "
                          "convert it to UTF-8") from None


@click.command()
@click.option("--prompt", default=None, help="Story opening; empty starts a new story.")
@click.option("--prompt-file", default=None, help="Read the prompt from this UTF-8 file ('-': standard input) instead of --prompt.")
@click.option("--model", "model_dir", default=None, help="Export folder (default: the bundled model).")
@click.option("--int8/--fp32", default=True, show_default=True, help="Which graph to run.")
@click.option("--max-new-tokens", type=int, default=None, help=f"default: {D['max_new_tokens']}")
@click.option("--temperature", type=float, default=None, help=f"0 = greedy (default: {D['temperature']})")
@click.option("--top-p", type=float, default=None, help=f"nucleus mass (default: {D['top_p']})")
@click.option("--top-k", type=int, default=None, help="0 = off (default)")
@click.option("--repetition-penalty", type=float, default=None, help="1 = off (default)")
@click.option("--min-p", type=float, default=None, help="drop tokens below this share of the likeliest one's probability; 0 = off (default)")
@click.option("--presence-penalty", type=float, default=None, help="subtracted from a generated token's logit once it appeared, -2..2; 0 = off (default)")
@click.option("--frequency-penalty", type=float, default=None, help="subtracted per time a token was generated, -2..2; 0 = off (default)")
@click.option("--seed", type=int, default=None, help="same seed, same text")
@click.option("--stop", multiple=True, help="Stop before this string (repeatable).")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads at most (fewer when other work keeps cores busy).")
@click.option("--plan", is_flag=True, help="Also print the FSP plan: words expected in the next tau tokens (64 for v10).")
@click.option("--ignore-eos", is_flag=True, help="Go on past <|endoftext|> (a new story starts) up to --max-new-tokens: fixed-length runs for timing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
@guarded
def run_cmd(prompt, prompt_file, model_dir, int8, max_new_tokens, temperature, top_p, top_k, repetition_penalty, min_p, presence_penalty, frequency_penalty,
            seed, stop, threads, plan, ignore_eos, as_json):
    """Generate a story with FlashLM. Text goes to stdout, statistics to stderr."""
    t0 = time.perf_counter()
    prompt = read_prompt(prompt, prompt_file)
    from flashlm_runtime.lm import FlashLM

    lm = FlashLM(model_dir, int8=int8, threads=threads)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, min_p=min_p,
                    presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed)
    kwargs = dict(max_new_tokens=max_new_tokens, stop=stop, stop_at_eos=not ignore_eos, **sampling)
    lm.sampling_params(**sampling)  # every value is checked before anything is written to stdout
    if max_new_tokens is not None and max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    tail = lm.prompt_tail(prompt)  # the prompt as the model reads it: what generate() will use
    n_prompt = len(tail.ids)
    if tail.dropped_chars:
        dropped = f"{tail.dropped_tokens:,} tokens, " if tail.dropped_tokens is not None else ""
        click.echo(f"note: the prompt is longer than the model's {lm.config.max_seq_len}-token context: only its last "
                   f"{n_prompt} tokens are used ({dropped}{tail.dropped_chars:,} characters dropped from the front)", err=True)
    prompt = prompt[tail.dropped_chars:]  # the text actually used, as tokenizing it again gives the same ids
    planned = lm.plan(prompt) if plan else None
    if as_json:
        g = lm.generate(prompt, **kwargs)
        g.stats["seconds_from_start"] = time.perf_counter() - t0
        click.echo(json.dumps({"prompt": prompt, "text": g.text, "token_ids": g.token_ids, "finish_reason": g.finish_reason,
                               "prompt_tokens": len(g.prompt_ids), "prompt_truncated": tail.dropped_tokens,
                               "prompt_dropped_chars": tail.dropped_chars,
                               "plan": planned, "model": str(lm.export.root), "int8": int8, "threads": lm.threads, "stats": g.stats}))
        return
    if planned is not None:
        tau = (lm.export.manifest.get("fsp") or {}).get("tau")
        click.echo(f"plan (next {tau or '?'} tokens): " + ", ".join(f"{w} {p:.2f}" for w, p in planned), err=True)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    start = time.perf_counter()
    first = None
    n = 0
    for piece in lm.stream(prompt, **kwargs):
        if first is None:
            first = time.perf_counter()
        n += piece.token_id >= 0
        out.write(piece.text)
        out.flush()
    end = time.perf_counter()
    out.write("\n")
    decode_s = end - (first or end)
    tok_s = (n - 1) / decode_s if n > 1 and decode_s > 0 else float("nan")
    click.echo(f"[{n_prompt} prompt tokens, {n} new tokens, time to first token "
               f"{((first or end) - start) * 1e3:.0f} ms ({((first or end) - t0) * 1e3:.0f} ms from start), {tok_s:,.0f} tok/s]", err=True)
