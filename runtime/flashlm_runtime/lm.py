"""The public runtime API: load an export folder; generate, stream, batch, score, plan. No torch."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from flashlm import artifacts as A
from flashlm.errors import CheckpointError, ConfigError
from flashlm_runtime.engine import Engine
from flashlm_runtime.manifest import ExportFolder, open_export
from flashlm_runtime.sampling import SamplingParams, apply_repetition_penalty, sample_token
from flashlm_runtime.session import open_session, run_backbone

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
# Function words that are nearly certain to appear in any 64-token stretch of a story; the plan
# read-out skips them so that it shows what the story is about (pass content_only=False to keep them).
FUNCTION_WORDS = frozenset(
    "a an the and or but so to of in on at for with from by as is was were be been are am it its he she his her "
    "him they them their we our you your i me my that this there then than not no all very said up down out "
    "into one day time had have has did do does what when who would could can will just too".split())


@dataclass
class Piece:
    """One streamed step: the new text (may be '' while a UTF-8 character is incomplete) and the token id."""

    text: str
    token_id: int


@dataclass
class Generation:
    """A finished generation for one prompt."""

    text: str  # the generated continuation (prompt not included, stop string removed)
    token_ids: list[int]
    prompt_ids: list[int]
    finish_reason: str  # "length" | "eos" | "stop"
    prompt_truncated: int = 0  # prompt tokens dropped to fit the context
    stats: dict = field(default_factory=dict)


@dataclass
class Score:
    """Teacher-forced log-probabilities of a text."""

    tokens: int
    nll: float  # total negative log-likelihood (nats)
    token_logprobs: list[float]

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / max(1, self.tokens))


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / A.MANIFEST).is_file():
        raise CheckpointError(
            "no --model given and this install bundles no default model; export one with "
            "`flashlm-export CHECKPOINT --out DIR --int8` and pass --model DIR")
    return DEFAULT_MODEL_DIR


class _TextStream:
    """Incremental detokenizer that never splits a UTF-8 character and holds back possible stop strings."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.decoder = DecodeStream(skip_special_tokens=True)
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # all decoded text so far
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        chunk = self.decoder.step(self.tokenizer, token_id)
        if chunk:
            self.text += chunk
        for s in self.stops:
            i = self.text.find(s, max(0, self.emitted - len(s)))
            if i != -1:
                self.text = self.text[:i]
                self.stopped = True
        safe = len(self.text) if self.stopped else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted:safe]
        self.emitted = safe
        return out

    def flush(self) -> str:
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out


class FlashLM:
    """A FlashLM export loaded into onnxruntime.

    >>> lm = FlashLM()                      # the bundled default model, int8
    >>> print(lm.generate("Once upon a time", seed=0).text)
    """

    def __init__(self, model_dir=None, *, int8: bool = True, threads: int = 1, verify: str = "used", fsp: bool = True):
        cpus = os.cpu_count() or 1
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= cpus:
            raise ConfigError(f"threads must be an integer from 1 to this machine's {cpus} CPUs, got {threads!r}")
        self.export: ExportFolder = open_export(model_dir if model_dir is not None else default_model_dir(), verify=verify)
        self.config = self.export.config
        self.int8 = int8
        self.session = open_session(str(self.export.graph_path("model_quantized" if int8 else "model")), threads=threads)
        self._check_io()
        self._fsp_session = None
        self._fsp_enabled = fsp
        self._threads = threads
        self.tokenizer = Tokenizer.from_file(str(self.export.verified(A.TOKENIZER)))
        self.eot_id = self.export.eot_id
        self.generation_defaults = {**A.GENERATION_DEFAULTS, **self.export.manifest.get("generation", {})}

    def _check_io(self) -> None:
        got = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        want = A.backbone_inputs(self.config.n_layers), A.backbone_outputs(self.config.n_layers)
        if got != want:
            raise CheckpointError(f"{self.export.root}: graph IO {got} does not match the FlashLM contract {want}")

    # ---------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ConfigError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. a command-line argument in another encoding (surrogate escapes)
            raise ConfigError(f"the prompt is not valid UTF-8 text (byte {exc.object[exc.start:exc.end]!r} at {exc.start}); "
                              "pass UTF-8 text") from None
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _prompt_ids(self, prompt: str | list[int]) -> tuple[list[int], int]:
        ids = list(prompt) if not isinstance(prompt, str) else self.encode(prompt)
        vocab = self.config.vocab_size
        if any(not isinstance(i, (int, np.integer)) or not 0 <= i < vocab for i in ids):
            raise ConfigError(f"prompt token ids must be integers in [0, {vocab}); got {[i for i in ids if not 0 <= i < vocab][:3]}")
        if not ids:
            ids = [self.eot_id]  # an empty prompt starts a new story
        limit = self.config.max_seq_len
        return (ids[-limit:], len(ids) - limit) if len(ids) > limit else (ids, 0)

    # ---------------------------------------------------------------- generation
    def stream_batch(self, prompts: list, **kwargs) -> Iterator[tuple[int, Piece]]:
        """Yield (row, Piece) as tokens are produced, for a batch of prompts (left-padded).

        Each row samples with its own RNG seeded with `seed`, so a row's text equals what its prompt
        gives alone (fp32). Finished rows (eos, stop string, length) stop yielding.
        """
        yield from self._stream(prompts, {}, **kwargs)

    def sampling_params(self, *, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        repetition_penalty: float | None = None, seed: int | None = None) -> SamplingParams:
        """The export's generation defaults with these overrides (None = keep), validated."""
        d = self.generation_defaults
        return SamplingParams(
            temperature=d["temperature"] if temperature is None else temperature,
            top_k=d["top_k"] if top_k is None else top_k,
            top_p=d["top_p"] if top_p is None else top_p,
            repetition_penalty=d["repetition_penalty"] if repetition_penalty is None else repetition_penalty,
            seed=seed,
        )

    def _stream(self, prompts: list, state: dict, *, max_new_tokens: int | None = None, temperature: float | None = None,
                top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                seed: int | None = None, stop: str | tuple[str, ...] | list[str] = (), stop_at_eos: bool = True) -> Iterator[tuple[int, Piece]]:
        """stream_batch's body; fills state["rows"] (prompt ids, dropped count) and state["finish"]."""
        max_new_tokens = self.generation_defaults["max_new_tokens"] if max_new_tokens is None else max_new_tokens
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        params = self.sampling_params(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
        if not prompts:
            raise ConfigError("no prompts given")
        stops = tuple(s for s in ((stop,) if isinstance(stop, str) else stop) if s)  # one string is one stop, not its characters
        rows = state["rows"] = [self._prompt_ids(p) for p in prompts]
        finish = state["finish"] = ["length"] * len(rows)
        if max_new_tokens == 0:
            return
        rngs = [np.random.default_rng(seed) for _ in rows]
        texts = [_TextStream(self.tokenizer, stops) for _ in rows]
        seen = [np.array(sorted(set(ids)), np.int64) for ids, _ in rows]
        active = [True] * len(rows)
        engine = Engine(self.session, self.config, pad_id=self.eot_id)
        logits = engine.prefill([ids for ids, _ in rows])
        for step in range(max_new_tokens):
            tokens = []
            for r in range(len(rows)):
                if not active[r]:
                    tokens.append(self.eot_id)
                    continue
                lg = apply_repetition_penalty(logits[r], seen[r], params.repetition_penalty)
                t = sample_token(lg, params, rngs[r])
                tokens.append(t)
                if params.repetition_penalty != 1.0 and t not in seen[r]:
                    seen[r] = np.append(seen[r], t)
                if stop_at_eos and t == self.eot_id:
                    active[r] = False
                    finish[r] = "eos"
                    tail = texts[r].flush()
                    if tail:
                        yield r, Piece(tail, -1)
                    continue
                piece = texts[r].push(t)
                yield r, Piece(piece, t)
                if texts[r].stopped:
                    active[r] = False
                    finish[r] = "stop"
            if not any(active) or step == max_new_tokens - 1:
                break
            logits = engine.step(tokens)
        for r in range(len(rows)):
            if active[r]:
                tail = texts[r].flush()
                if tail:
                    yield r, Piece(tail, -1)

    def stream(self, prompt, **kwargs) -> Iterator[Piece]:
        """Yield Pieces for one prompt; concatenating piece.text gives the generated text."""
        for _, piece in self.stream_batch([prompt], **kwargs):
            yield piece

    def generate_batch(self, prompts: list, **kwargs) -> list[Generation]:
        t0 = time.perf_counter()
        first: float | None = None
        texts = [[] for _ in prompts]
        ids = [[] for _ in prompts]
        state: dict = {}
        for r, piece in self._stream(prompts, state, **kwargs):
            if first is None:
                first = time.perf_counter() - t0
            texts[r].append(piece.text)
            if piece.token_id >= 0:
                ids[r].append(piece.token_id)
        elapsed = time.perf_counter() - t0
        out = []
        n_new = sum(len(i) for i in ids)
        for r, (prompt_ids, dropped) in enumerate(state["rows"]):
            stats = {"prompt_tokens": len(prompt_ids), "new_tokens": len(ids[r]), "seconds": elapsed,
                     "time_to_first_token": first, "tokens_per_second": n_new / elapsed if elapsed > 0 else None, "batch": len(prompts)}
            out.append(Generation("".join(texts[r]), ids[r], prompt_ids, state["finish"][r], dropped, stats))
        return out

    def generate(self, prompt: str | list[int] = "", **kwargs) -> Generation:
        """Generate a continuation. kwargs: max_new_tokens, temperature (0 = greedy), top_k, top_p,
        repetition_penalty, seed, stop (strings), stop_at_eos."""
        return self.generate_batch([prompt], **kwargs)[0]

    # ---------------------------------------------------------------- scoring and planning
    def score_ids(self, ids: list[int]) -> Score:
        """Log-probabilities of ids[1:] given the preceding tokens, in non-overlapping context windows."""
        ids = np.asarray(ids, np.int64)
        if ids.size < 2:
            raise ConfigError("need at least 2 tokens to score")
        T = self.config.max_seq_len
        logps: list[float] = []
        for s in range(0, ids.size - 1, T):
            y = ids[s + 1 : s + T + 1]
            x = ids[s : s + y.size]
            logits = run_backbone(self.session, self.config, x[None])[0][0].astype(np.float64)  # (len, V)
            m = logits.max(-1, keepdims=True)
            lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
            logps.extend((logits[np.arange(y.size), y] - lse).tolist())
        return Score(len(logps), -float(np.sum(logps)), logps)

    def score(self, text: str, *, prepend_eot: bool = True) -> Score:
        """Log-probabilities / PPL of a text (the first token is scored after <|endoftext|> by default)."""
        ids = ([self.eot_id] if prepend_eot else []) + self.encode(text)
        return self.score_ids(ids)

    def plan(self, prompt: str | list[int] = "", *, k: int = 10, content_only: bool = True) -> list[tuple[str, float]]:
        """FSP read-out: the k words the model expects in the next `tau` tokens after the prompt,
        with their predicted probability of appearing (sigmoid of the FSP head). Function words
        (FUNCTION_WORDS) are skipped unless content_only=False."""
        graphs = self.export.manifest["graphs"]
        if not self._fsp_enabled or not {"fsp_head", "fsp_head_quantized"} & graphs.keys():
            raise CheckpointError(f"{self.export.root}: this export has no FSP head (exported with --no-fsp-head)")
        if self._fsp_session is None:
            name = "fsp_head_quantized" if self.int8 and "fsp_head_quantized" in graphs else "fsp_head"
            self._fsp_session = open_session(str(self.export.graph_path(name)), threads=self._threads)
        ids, _ = self._prompt_ids(prompt)
        engine = Engine(self.session, self.config, pad_id=self.eot_id)
        engine.prefill([ids])
        logits = self._fsp_session.run(None, {A.FSP_HIDDEN: engine.hidden[:, None, :].astype(np.float32)})[0][0, 0]
        order = np.argsort(-logits)
        words: dict[str, float] = {}
        for t in order:
            word = self.tokenizer.decode([int(t)]).strip()
            skip = content_only and word.lower() in FUNCTION_WORDS
            if len(word) >= 2 and word.isalpha() and not skip and word.lower() not in words:
                words[word.lower()] = (word, float(1.0 / (1.0 + np.exp(-logits[t]))))  # most likely spelling first
                if len(words) == k:
                    break
        return list(words.values())
