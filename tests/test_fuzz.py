"""Property-based fuzzing (Hypothesis) of what users hand FlashLM: library arguments, export folders with mutated
manifests and tokenizers, flashlm-run's options, and flashlm-serve's request bodies. Whatever comes in, only a
FlashLMError (or, from the commands, a one-line error) may come out. Bounded for CI (the "ci" profile, well under a
minute); `make fuzz` runs the "long" profile (FLASHLM_FUZZ=long)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashlm_core.errors import FlashLMError
from flashlm_core.hashing import sha256_file

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("long" if os.environ.get("FLASHLM_FUZZ") == "long" else "ci")

# anything a caller might pass where a number, a string or a list is expected
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=20), st.binary(max_size=20), st.lists(st.integers(-5, 5000), max_size=5))
NUMBERISH = st.one_of(JUNK, st.floats(-3, 3), st.integers(-3, 300))
PROMPTS = st.one_of(st.text(max_size=300), st.lists(st.integers(-10, 600), max_size=300), JUNK,
                    st.lists(st.one_of(st.integers(0, 511), st.booleans(), st.floats(0, 10), st.text(max_size=2)), max_size=10))
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=10)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)


@pytest.fixture(scope="module")
def lm(tiny_export):
    from flashlm_runtime import FlashLM

    return FlashLM(tiny_export)


@given(prompt=PROMPTS, temperature=NUMBERISH, top_p=NUMBERISH, top_k=NUMBERISH, min_p=NUMBERISH, repetition_penalty=NUMBERISH,
       presence_penalty=NUMBERISH, frequency_penalty=NUMBERISH, seed=NUMBERISH, stop=st.one_of(JUNK, st.lists(st.text(max_size=3), max_size=3)),
       max_new_tokens=st.one_of(st.integers(-2, 4), JUNK.filter(lambda v: not isinstance(v, int) or isinstance(v, bool) or v < 5)))
def test_generate_raises_only_flashlm_errors(lm, prompt, temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty,
                                             frequency_penalty, seed, stop, max_new_tokens):
    try:
        g = lm.generate(prompt, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed, stop=stop,
                        max_new_tokens=max_new_tokens)
    except FlashLMError:
        return
    assert isinstance(g.text, str) and all(0 <= t < lm.config.vocab_size for t in g.token_ids)


@given(ids=st.one_of(PROMPTS, JUNK), k=NUMBERISH)
def test_score_decode_and_plan_raise_only_flashlm_errors(lm, ids, k):
    for call in (lambda: lm.score_ids(ids), lambda: lm.decode(ids), lambda: lm.plan(ids if isinstance(ids, (str, list)) else "x", k=k)):
        try:
            call()
        except FlashLMError:
            pass


def _mutate(value, path: list, new):
    """value with the node at `path` (keys or indices, as far as they reach) replaced by `new` (or deleted when new is ...)."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return value if new is ... else new  # nothing left to delete here
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = keys[path[0] % len(keys)]
    out = dict(value) if isinstance(value, dict) else list(value)
    if new is ... and len(path) == 1:
        del out[key]
    else:
        out[key] = _mutate(out[key], path[1:], new)
    return out


def _folder(src: Path, dst: Path, manifest: dict | None, tokenizer: bytes | None, resign: bool) -> Path:
    """A copy of an export (graphs hard-linked) with another manifest and/or tokenizer.json, its hashes redone if asked."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "onnx").mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file():
            os.link(f, dst / f.relative_to(src))
    if tokenizer is not None:
        (dst / "tokenizer.json").unlink()
        (dst / "tokenizer.json").write_bytes(tokenizer)
    manifest = json.loads((src / "manifest.json").read_text()) if manifest is None else manifest
    if resign and isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        for rel, info in manifest["files"].items():
            if isinstance(rel, str) and isinstance(info, dict) and (dst / rel).is_file() and not (dst / rel).is_symlink():
                info.update(bytes=(dst / rel).stat().st_size, sha256=sha256_file(dst / rel))
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), new=st.one_of(JSON, st.just(...)), resign=st.booleans())
def test_a_mutated_manifest_is_refused_or_runs(tiny_export, tmp_path, path, new, resign):
    from flashlm_runtime import FlashLM

    manifest = _mutate(json.loads((tiny_export / "manifest.json").read_text()), path, new)
    folder = _folder(tiny_export, tmp_path / "m", manifest, None, resign)
    try:
        FlashLM(folder).generate("Once", max_new_tokens=2)
    except FlashLMError:
        pass


@given(cut=st.integers(0, 400_000), flip=st.lists(st.tuples(st.integers(0, 400_000), st.integers(0, 255)), max_size=4),
       path=st.lists(st.integers(0, 50), max_size=4), new=JSON)
def test_a_mutated_tokenizer_is_refused_or_runs(tiny_export, tmp_path, cut, flip, path, new):
    from flashlm_runtime import FlashLM

    raw = (tiny_export / "tokenizer.json").read_bytes()
    if path:  # a JSON-level change
        raw = json.dumps(_mutate(json.loads(raw), path, new)).encode()
    data = bytearray(raw[: cut] if cut < len(raw) else raw)
    for at, byte in flip:
        if data:
            data[at % len(data)] = byte
    folder = _folder(tiny_export, tmp_path / "t", None, bytes(data), resign=True)
    try:
        FlashLM(folder).generate("Once upon a time", max_new_tokens=2)
    except FlashLMError:
        pass


OPTION = st.sampled_from(["--temperature", "--top-p", "--top-k", "--min-p", "--repetition-penalty", "--presence-penalty",
                          "--frequency-penalty", "--seed", "--max-new-tokens", "--threads", "--stop", "--prompt"])
VALUE = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e39", "", "x", "1e-308", "2", "0.5", "-0", "3"]),
                  st.text(max_size=6))


@given(options=st.lists(st.tuples(OPTION, VALUE), max_size=4))
def test_flashlm_run_options_are_one_line_errors_or_run(tiny_export, options):
    from click.testing import CliRunner

    from flashlm_runtime.cli import run_cmd

    args = ["--model", str(tiny_export), "--max-new-tokens", "3"]
    for flag, value in options:
        if flag == "--max-new-tokens" and value.lstrip("-").isdigit() and int(value) > 5:
            value = "5"  # bounded work
        args += [flag, value]
    result = CliRunner().invoke(run_cmd, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr


BODY_KEYS = st.sampled_from(["prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "best_of", "stop", "stream",
                             "stream_options", "logprobs", "echo", "seed", "presence_penalty", "frequency_penalty",
                             "repeat_penalty", "repetition_penalty", "model", "suffix", "logit_bias", "ignore_eos", "plan", "user"])


@given(body=st.one_of(JSON, st.dictionaries(BODY_KEYS, st.one_of(JSON, NUMBERISH.filter(lambda v: not isinstance(v, bytes))), max_size=8)))
def test_a_completion_body_is_parsed_or_refused_with_an_api_error(lm, body):
    from flashlm_runtime import openai_api as api

    try:
        req = api.parse_completion(body, lm=lm, model_id="tiny", limits=api.Limits())
    except api.ApiError as exc:
        assert exc.status in (400, 404) and exc.body()["error"]["message"]
        return
    assert all(0 < len(p) <= lm.config.max_seq_len for p in req.prompts) and req.n >= 1
