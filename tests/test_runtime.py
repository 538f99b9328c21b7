import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flashlm.generate import generate as torch_generate
from flashlm_core.errors import CheckpointError, ConfigError
from flashlm_runtime import FlashLM
from flashlm_runtime.textstream import TextStream

BIN = Path(sys.executable).parent


def test_greedy_200_tokens_match_torch_through_the_window_slide(lm32, torch_model):
    prompt = lm32.encode("Once upon a time, there was a little")
    want = torch_generate(torch_model, prompt, max_new_tokens=200, temperature=0)
    got = lm32.generate(prompt, max_new_tokens=200, temperature=0, stop_at_eos=False)
    assert lm32.config.max_seq_len < len(prompt) + 200  # the context (128) slides at least once
    assert got.token_ids == want


@torch.no_grad()
def test_teacher_forced_logprobs_match_torch(lm32, lm8, torch_model, corpus_dir):
    text = (corpus_dir / "valid.txt").read_text()[:3000]
    ids = [lm32.eot_id] + lm32.encode(text)
    score = lm32.score_ids(ids)
    T = torch_model.cfg.max_seq_len
    ref = []
    for s in range(0, len(ids) - 1, T):
        x = torch.tensor([ids[s : s + T]])
        y = ids[s + 1 : s + T + 1]
        logp = torch.log_softmax(torch_model(x[:, : len(y)])[0][0].double(), -1)
        ref.extend(logp[torch.arange(len(y)), torch.tensor(y)].tolist())
    assert score.tokens == len(ids) - 1
    assert np.abs(np.array(score.token_logprobs) - np.array(ref)).max() <= 1e-4
    # int8: top-1 agreement with fp32 on the same text
    x = np.array(ids[:T], np.int64)
    a = _logits(lm32, x)
    b = _logits(lm8, x)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95
    assert abs(lm8.score_ids(ids).ppl / score.ppl - 1) < 0.02


def _logits(lm, x):
    from flashlm_runtime.session import run_backbone

    return run_backbone(lm.session, lm.config, x[None])[0][0]


def test_same_seed_same_text_in_process_and_across_processes(lm8, tiny_export):
    a = lm8.generate("The dog", seed=123, max_new_tokens=60)
    b = lm8.generate("The dog", seed=123, max_new_tokens=60)
    c = lm8.generate("The dog", seed=124, max_new_tokens=60)
    assert a.text == b.text and a.token_ids == b.token_ids and a.token_ids != c.token_ids
    out = subprocess.run([str(BIN / "flashlm-run"), "--model", str(tiny_export), "--prompt", "The dog", "--seed", "123",
                          "--max-new-tokens", "60", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["token_ids"] == a.token_ids


def test_batch_rows_equal_each_prompt_alone(lm32):
    prompts = ["Once upon a time", "The little girl saw a big red ball in the park and", ""]
    for kwargs in ({"temperature": 0}, {"seed": 5, "temperature": 0.9, "top_p": 0.95}):
        batch = lm32.generate_batch(prompts, max_new_tokens=150, stop_at_eos=False, **kwargs)
        for p, row in zip(prompts, batch):
            alone = lm32.generate(p, max_new_tokens=150, stop_at_eos=False, **kwargs)
            assert row.token_ids == alone.token_ids and row.text == alone.text


def test_stream_pieces_concatenate_to_the_text(lm8):
    pieces = list(lm8.stream("A cat sat", seed=3, max_new_tokens=80))
    g = lm8.generate("A cat sat", seed=3, max_new_tokens=80)
    assert "".join(p.text for p in pieces) == g.text
    assert [p.token_id for p in pieces if p.token_id >= 0] == g.token_ids


def test_stream_never_splits_utf8(lm8):
    text = "Mia said “héllo” 🙂 and 日本 — done."
    stream = TextStream(lm8.tokenizer, ())
    ids = lm8.encode(text)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert "" in pieces[:-1]  # some token ended inside a multi-byte character and was held back


def test_stop_strings_and_eos(lm8):
    free = lm8.generate("Once upon a time", seed=1, max_new_tokens=120, stop_at_eos=False)
    word = free.text.split()[3]
    g = lm8.generate("Once upon a time", seed=1, max_new_tokens=120, stop=[word], stop_at_eos=False)
    assert g.finish_reason == "stop" and word not in g.text and free.text.startswith(g.text)
    # the same seed without stopping at <|endoftext|> shows where it comes: the stopping run ends there, without it
    ended = 0
    for s in range(4):
        through = lm8.generate("The end.", seed=s, max_new_tokens=200, stop_at_eos=False).token_ids
        r = lm8.generate("The end.", seed=s, max_new_tokens=200)
        if lm8.eot_id in through:
            ended += 1
            assert r.finish_reason == "eos" and r.token_ids == through[: through.index(lm8.eot_id)]
        else:
            assert r.finish_reason == "length" and r.token_ids == through
    assert ended  # 200 tokens after "The end." hold a story's end for some seed


def test_empty_and_overlong_prompts(lm8):
    g = lm8.generate("", seed=0, max_new_tokens=10)
    assert g.prompt_ids == [lm8.eot_id] and len(g.token_ids) == 10
    long_ids = list(range(1, 400))
    g = lm8.generate(long_ids, seed=0, max_new_tokens=5)
    assert g.prompt_truncated == 399 - lm8.config.max_seq_len and g.prompt_ids == long_ids[-lm8.config.max_seq_len:]
    assert lm8.generate("x", max_new_tokens=0).token_ids == []


def test_plan_reads_the_fsp_head(lm8):
    plan = lm8.plan("Once upon a time there was a little girl named Lily. She", k=8)
    assert len(plan) == 8 and all(0 < p < 1 for _, p in plan) and all(w.isalpha() for w, _ in plan)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"max_new_tokens": -1}, "max_new_tokens"), ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_bad_sampling_arguments(lm8, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        lm8.generate("hi", **kwargs)


def test_bad_model_folders(tiny_export, tmp_path):
    import shutil

    with pytest.raises(CheckpointError, match="no such export folder"):
        FlashLM(tmp_path / "missing")
    with pytest.raises(ConfigError, match="threads"):
        FlashLM(tiny_export, threads=0)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_export, bad)
    graph = bad / "onnx" / "model_quantized.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        FlashLM(bad)
    FlashLM(bad, int8=False)  # only the graphs a run loads are hashed by default ...
    with pytest.raises(CheckpointError, match="model_quantized.onnx: sha256 does not match"):
        FlashLM(bad, int8=False, verify="all")  # ... and every listed file with verify="all"
    fsp = bad / "onnx" / "fsp_head_quantized.onnx"
    shutil.copyfile(tiny_export / "onnx" / "model_quantized.onnx", graph)
    fsp.write_bytes(fsp.read_bytes()[:-1] + b"\x00")
    lm = FlashLM(bad)
    with pytest.raises(CheckpointError, match="fsp_head_quantized.onnx: sha256 does not match"):
        lm.plan("Once")  # the FSP head is checked when it is first loaded
    fsp.write_bytes(b"short")
    with pytest.raises(CheckpointError, match="bytes.*truncated"):
        FlashLM(bad)
    m = json.loads((tiny_export / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "format_version": 7}))
    with pytest.raises(CheckpointError, match="format_version 7 is newer"):
        FlashLM(bad)
    (bad / "manifest.json").write_text(json.dumps({**m, "decoding": {**m["decoding"], "window_keep": "192"}}))
    with pytest.raises(CheckpointError, match="decoding.window_keep must be of type int, got '192'"):
        FlashLM(bad)


TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from flashlm_runtime import FlashLM
lm = FlashLM(sys.argv[1])
g = lm.generate("Once upon a time", seed=0, max_new_tokens=20, stop_at_eos=False)
lm.plan("Once upon a time")
lm.score("Once upon a time there was a cat.")
from flashlm_runtime.cli import run_cmd
run_cmd.main(["--model", sys.argv[1], "--prompt", "Hi", "--max-new-tokens", "5", "--plan"], standalone_mode=False)
import pkgutil, importlib, flashlm_core
for info in pkgutil.iter_modules(flashlm_core.__path__):  # the whole core layer, not only what the runtime uses
    importlib.import_module(f"flashlm_core.{info.name}")
loaded = {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
assert "torch" not in loaded, "torch was imported"
assert not {"flashlm", "flashlm_export"} & loaded, f"the runtime reached above the core: {sorted(loaded & {'flashlm', 'flashlm_export'})}"
print("TORCH-FREE-OK", len(g.token_ids))
"""


def test_runtime_and_cli_never_import_torch(tiny_export):
    r = subprocess.run([sys.executable, "-c", TORCH_FREE, str(tiny_export)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "TORCH-FREE-OK 20" in r.stdout


def test_runtime_and_core_sources_import_no_torch_and_nothing_above_them():
    root = Path(__file__).resolve().parents[1]
    upward = ("import torch", "from torch", "import flashlm.", "from flashlm.", "from flashlm import", "import flashlm_export", "from flashlm_export")
    for layer in ("runtime", "core"):
        for path in (root / layer).rglob("*.py"):
            for line in path.read_text().splitlines():
                assert not line.strip().startswith(upward), f"{path}: {line.strip()}"
    for path in (root / "core").rglob("*.py"):  # the core stands on nothing of ours but itself
        assert "flashlm_runtime" not in path.read_text(), path


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature must be from 0 (greedy) to 100"),
    (["--top-p", "2"], "top_p must be in (0, 1]"),
    (["--top-k", "-3"], "top_k must be an integer >= 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--threads", "0"], "threads must be an integer from 1 to"),
])
def test_cli_bad_input_is_one_line_and_nonzero(tiny_export, args, message):
    r = subprocess.run([str(BIN / "flashlm-run"), "--model", str(tiny_export), "--prompt", "hi", *args], capture_output=True, text=True)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_model_and_long_prompt(tiny_export, tmp_path):
    r = subprocess.run([str(BIN / "flashlm-run"), "--model", str(tmp_path / "none"), "--prompt", "hi"], capture_output=True, text=True)
    assert r.returncode == 1 and "no such export folder" in r.stderr
    r = subprocess.run([str(BIN / "flashlm-run"), "--model", str(tiny_export), "--prompt", "word " * 300, "--max-new-tokens", "3"],
                       capture_output=True, text=True, env={**os.environ})
    from tokenizers import Tokenizer

    dropped = len(Tokenizer.from_file(str(tiny_export / "tokenizer.json")).encode("word " * 300).ids) - 128
    assert r.returncode == 0 and f"only its last 128 tokens are used ({dropped} tokens, " in r.stderr and "new tokens" in r.stderr


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not Path("/proc/stat").is_file(), reason="needs 2+ cores and /proc/stat")
def test_threads_are_a_ceiling_on_a_busy_machine(tiny_export):
    # one CPU-bound loop per core (bounded in time): only the cores other work leaves free get a thread
    loop = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count())]
    try:
        time.sleep(0.5)  # let the loops start
        lm = FlashLM(tiny_export, threads=2)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert lm.threads == 1
    assert FlashLM(tiny_export, threads=1).threads == 1  # one thread never samples the CPUs
    assert lm.generate("Once upon a time", max_new_tokens=5, temperature=0).token_ids  # and it still generates


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.8, 0, 0.9), (1.0, 0, 0.5), (0.7, 20, 0.95), (1.3, 5, 1.0), (0.5, 0, 1.0)])
def test_sampler_draws_from_torchs_filtered_distribution(temperature, top_k, top_p):
    """sample_rows keeps exactly filter_logits' tokens, draws them in proportion, and a row's pick does not
    depend on the other rows of the batch."""
    from flashlm.generate import filter_logits
    from flashlm_runtime.sampling import SamplingParams, sample_rows, sample_token

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, 300)) * 3).astype(np.float32)
    logits[1, :3] += 9  # a peaked row: a small nucleus
    logits[3] = rng.standard_normal(300) * 0.01  # no exact ties: torch breaks those in its own order
    logits[3, 0] = 5 * temperature  # one token 5 nats above 299 near-equal ones: the nucleus reaches past the first gap
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    kept = torch.isfinite(filter_logits(torch.from_numpy(logits) / temperature, top_k=top_k, top_p=top_p)).numpy()
    probs = torch.softmax(filter_logits(torch.from_numpy(logits).double() / temperature, top_k=top_k, top_p=top_p), -1).numpy()

    def gens(seed=0):  # one generator a row
        return [np.random.default_rng(seed + r) for r in range(4)]

    draws = 4000
    rngs = gens(7)
    picks = np.array([sample_rows(logits, params, rngs) for _ in range(draws)])  # (draws, 4)
    for r in range(4):
        assert kept[r, picks[:, r]].all()  # never a filtered token
        freq = np.bincount(picks[:, r], minlength=300) / draws
        assert np.abs(freq - probs[r]).max() < 4 * np.sqrt(probs[r].max() / draws) + 1e-9
    for seed in range(50):  # rows that sort in the batch table and rows that widen alone, against each row alone
        batch = sample_rows(logits, params, gens(seed))
        assert batch == [sample_token(logits[r], params, np.random.default_rng(seed + r)) for r in range(4)]
    # A contrib graph's top outputs (the 32 likeliest tokens' probabilities): the same picks from the same draws,
    # rows whose nucleus reaches past them (row 3) or top-k beyond them falling back to the logits
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :32]
    softmax = torch.softmax(torch.from_numpy(logits).double() / temperature, -1).numpy()
    top = (np.take_along_axis(softmax, order, -1).astype(np.float32), order)
    for seed in range(50):
        assert sample_rows(logits, params, gens(seed), top) == sample_rows(logits, params, gens(seed))
    for k in (0, 100):
        kp = SamplingParams(temperature=temperature, top_k=k, top_p=top_p)
        assert sample_rows(logits, kp, gens(), top) == sample_rows(logits, kp, gens())
    assert sample_rows(logits, SamplingParams(temperature=0), gens(), top) == logits.argmax(-1).tolist()
    with pytest.raises(CheckpointError, match="produced nan logits"):
        sample_rows(logits, params, gens(), (np.full_like(top[0], np.nan), order))


def _reference_probs(logits: np.ndarray, *, temperature: float, top_k: int, min_p: float, top_p: float) -> np.ndarray:
    """SamplingParams' documented filters, written out in float64: temperature, top-k, min-p, then the nucleus."""
    x = logits.astype(np.float64) / temperature
    keep = np.ones(x.size, bool)
    if top_k:
        keep[np.argsort(-x, kind="stable")[top_k:]] = False
    p = np.where(keep, np.exp(x - x.max()), 0.0)
    keep &= p >= min_p * p.max()
    p = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum()
    order = np.argsort(-p, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    nucleus = np.zeros(x.size, bool)
    nucleus[order[before <= top_p]] = True
    p = np.where(nucleus & keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("temperature, top_k, min_p, top_p", [(0.8, 0, 0.05, 0.9), (1.0, 0, 0.2, 1.0), (1.3, 20, 0.1, 0.95), (0.7, 0, 0.5, 0.5)])
def test_min_p_draws_from_the_reference_distribution(temperature, top_k, min_p, top_p):
    """min_p keeps exactly the tokens of the reference filter and draws them in proportion, from the logits and from
    a contrib graph's top outputs alike."""
    from flashlm_runtime.sampling import SamplingParams, sample_rows

    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((3, 300)) * 3).astype(np.float32)
    logits[1, :3] += 9
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    probs = np.stack([_reference_probs(row, temperature=temperature, top_k=top_k, min_p=min_p, top_p=top_p) for row in logits])
    draws = 4000
    rngs = [np.random.default_rng(11 + r) for r in range(3)]
    picks = np.array([sample_rows(logits, params, rngs) for _ in range(draws)])
    for r in range(3):
        assert (probs[r, picks[:, r]] > 0).all()
        freq = np.bincount(picks[:, r], minlength=300) / draws
        assert np.abs(freq - probs[r]).max() < 4 * np.sqrt(probs[r].max() / draws) + 1e-9
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :32]
    x = logits.astype(np.float64) / temperature
    softmax = np.exp(x - x.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    top = (np.take_along_axis(softmax, order, -1).astype(np.float32), order)
    for seed in range(50):
        gens = lambda: [np.random.default_rng(seed + r) for r in range(3)]  # noqa: B023
        assert sample_rows(logits, params, gens(), top) == sample_rows(logits, params, gens())


def test_presence_and_frequency_penalties_follow_openais_formula(lm8):
    """logit - count * frequency - (count > 0) * presence over the generated tokens; the repetition penalty first."""
    from flashlm_runtime.sampling import SamplingParams, apply_penalties

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32)
    before = logits.copy()
    generated, counts = np.array([3, 7, 9]), np.array([1, 4, 2], np.float32)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=-0.25, repetition_penalty=1.3)
    got = apply_penalties(logits, params, seen=np.array([3, 20]), generated=generated, counts=counts)
    want = logits.astype(np.float64).copy()
    for t in (3, 20):
        want[t] = want[t] / 1.3 if want[t] > 0 else want[t] * 1.3
    for t, c in zip(generated, counts):
        want[t] -= c * -0.25 + 0.5
    assert np.abs(got - want).max() < 1e-6 and np.array_equal(logits, before)  # on a copy
    # through generation: strong penalties change a greedy run
    ids = lm8.generate("Once upon a time", temperature=0, max_new_tokens=40, frequency_penalty=2.0, presence_penalty=2.0,
                       stop_at_eos=False).token_ids
    assert ids != lm8.generate("Once upon a time", temperature=0, max_new_tokens=40, stop_at_eos=False).token_ids
    with pytest.raises(ConfigError, match="presence_penalty must be in"):
        lm8.generate("x", presence_penalty=3)
    with pytest.raises(ConfigError, match="min_p must be in"):
        lm8.generate("x", min_p=1.5)


def test_the_generation_methods_show_their_keywords_and_refuse_a_misspelt_one():
    import inspect

    from flashlm_runtime.lm import _BatchRun

    lm = FlashLM()
    wanted = [p for p in inspect.signature(_BatchRun).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for method in (lm.generate, lm.stream, lm.generate_batch, lm.stream_batch):
        params = inspect.signature(method).parameters.values()
        assert not any(p.kind is p.VAR_KEYWORD for p in params), method.__name__
        assert sorted((p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY) == sorted((p.name, p.default) for p in wanted)
        with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
            method(["Once"] if "batch" in method.__name__ else "Once", temprature=0)  # at the call, before any decoding
    assert "max_new_tokens: tokens to add at most" in inspect.getdoc(lm.generate)
