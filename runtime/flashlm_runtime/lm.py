"""The public runtime API: load an export folder; generate, stream, batch, score, plan. No torch."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flashlm_core import artifacts as A
from flashlm_core.errors import CheckpointError, ConfigError
from flashlm_core.generation import GENERATION_DEFAULTS
from flashlm_core.threads import busy_cores, free_cores
from flashlm_core.tokenizer_identity import MAX_TOKENIZER_BYTES
from flashlm_runtime.engine import DecodeLoop, Engine
from flashlm_runtime.manifest import ExportFolder, default_model_dir, open_export
from flashlm_runtime.plan import plan_words
from flashlm_runtime.prompt import PromptTail, prompt_tail
from flashlm_runtime.rowstate import Piece, RowState, sample_group
from flashlm_runtime.sampling import SamplingParams, top_temperature
from flashlm_runtime.session import io_mismatch, log_softmax, open_session, run_backbone, shape_mismatch
from flashlm_runtime.shared_kv import SharedKVEngine

BUSY_SAMPLE_SECONDS = 0.1  # how long FlashLM(threads > 1) watches the CPUs to count the free cores


@dataclass
class Generation:
    """A finished generation for one prompt."""

    text: str  # the generated continuation (prompt not included, stop string removed)
    token_ids: list[int]
    prompt_ids: list[int]
    finish_reason: str  # "length" | "eos" | "stop"
    prompt_truncated: int | None = 0  # prompt tokens dropped to fit the context (None: a head too long to count)
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


class FlashLM:
    """A FlashLM export loaded into onnxruntime.

    >>> lm = FlashLM()                      # the bundled default model, int8
    >>> print(lm.generate("Once upon a time", seed=0).text)
    """

    def __init__(self, model_dir=None, *, int8: bool = True, threads: int = 1, verify: str = "used", fsp: bool = True):
        cpus = os.cpu_count() or 1
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= cpus:
            raise ConfigError(f"threads must be an integer from 1 to this machine's {cpus} CPUs, got {threads!r}")
        if threads > 1:
            # `threads` is a ceiling: a decode step is a few hundred tiny ops, and an intra-op thread that shares its
            # core with another process stalls each of them (beside a busy loop per core, 2 threads decoded 1,020
            # tok/s where 1 did 1,175: bench/runtime_busy.py). So only cores that other work leaves free get a
            # thread; 0.1 s of /proc/stat, Linux only.
            threads = min(threads, free_cores(cpus, busy_cores(BUSY_SAMPLE_SECONDS)))
        self.threads = threads  # what the sessions use
        self.export: ExportFolder = open_export(model_dir if model_dir is not None else default_model_dir(), verify=verify)
        self.config = self.export.config
        self.int8 = int8
        self.session = open_session(str(self.export.graph_path("model_quantized" if int8 else "model")), threads=threads)
        problem = io_mismatch(self.session, A.backbone_inputs(self.config, self.ops), A.backbone_outputs(self.config, self.ops))
        problem = problem or shape_mismatch(self.session, self.config)
        if problem:
            raise CheckpointError(f"{self.export.root}: {problem}; re-export with flashlm-export")
        self._fsp_session = None
        self._fsp_enabled = fsp
        self.tokenizer = load_tokenizer(self.export.verified(A.TOKENIZER), self.config)
        self.eot_id = self.export.eot_id
        if self.tokenizer.token_to_id(A.EOT) != self.eot_id:
            raise CheckpointError(f"{self.export.root}: the manifest's eot_id {self.eot_id} is not the tokenizer's {A.EOT} "
                                  f"({self.tokenizer.token_to_id(A.EOT)}); re-export")
        self.generation_defaults = {**GENERATION_DEFAULTS, **(self.export.manifest.get("generation") or {})}

    @property
    def ops(self) -> str:
        """The export's graph variant, "plain" or "contrib": which decode loop runs it."""
        return self.export.ops

    def _engine(self) -> DecodeLoop:
        """A fresh decode loop for this export's graph variant."""
        kind = SharedKVEngine if self.ops == A.CONTRIB else Engine
        return kind(self.session, self.config, pad_id=self.eot_id)

    # ---------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        check_text(text)
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(self._check_ids(ids, what="ids to decode"), skip_special_tokens=True)

    def _check_ids(self, ids, *, what: str) -> list[int]:
        """ids as a list of ints in the vocabulary, or a ConfigError naming the first bad one."""
        if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, (list, tuple, np.ndarray)):
            raise ConfigError(f"{what} must be a list of token ids, got {type(ids).__name__}")
        vocab = self.config.vocab_size
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"{what} must be integers in [0, {vocab}); got {bad[0]!r}")
        return [int(i) for i in ids]

    def prompt_tail(self, prompt: str | list[int]) -> PromptTail:
        """What the model reads of a prompt (a str, or token ids): its last max_seq_len tokens, tokenized in bounded
        memory whatever the prompt's length, and what was dropped; an empty prompt is <|endoftext|> (a new story)."""
        limit = self.config.max_seq_len
        if isinstance(prompt, str):
            check_text(prompt)
            tail = prompt_tail(self.tokenizer, prompt, limit)
        else:
            if isinstance(prompt, (bytes, bytearray)) or not isinstance(prompt, (list, tuple, np.ndarray)):
                raise ConfigError(f"a prompt must be a str or a list of token ids, got {type(prompt).__name__}")
            ids = self._check_ids(prompt, what="prompt token ids")
            tail = PromptTail(ids[-limit:], max(0, len(ids) - limit), 0)
        if not tail.ids:
            return PromptTail([self.eot_id], 0, 0)
        return tail

    def _prompt_ids(self, prompt: str | list[int]) -> tuple[list[int], int | None]:
        tail = self.prompt_tail(prompt)
        return tail.ids, tail.dropped_tokens

    # ---------------------------------------------------------------- generation
    def sampling_params(self, *, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        repetition_penalty: float | None = None, seed: int | None = None, min_p: float | None = None,
                        presence_penalty: float | None = None, frequency_penalty: float | None = None) -> SamplingParams:
        """The export's generation defaults with these overrides (None = keep), validated."""
        d = self.generation_defaults
        return SamplingParams(
            temperature=d["temperature"] if temperature is None else temperature,
            top_k=d["top_k"] if top_k is None else top_k,
            top_p=d["top_p"] if top_p is None else top_p,
            repetition_penalty=d["repetition_penalty"] if repetition_penalty is None else repetition_penalty,
            seed=seed,
            min_p=0.0 if min_p is None else min_p,
            presence_penalty=0.0 if presence_penalty is None else presence_penalty,
            frequency_penalty=0.0 if frequency_penalty is None else frequency_penalty,
        )

    def stream_batch(self, prompts: list, *, max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 presence_penalty: float | None = None, frequency_penalty: float | None = None, seed: int | None = None,
                 stop: str | Sequence[str] = (), stop_at_eos: bool = True) -> Iterator[tuple[int, Piece]]:
        """Yield (row, Piece) as tokens are produced, for a batch of prompts (left-padded); the keywords are
        generate()'s.

        Each row samples with its own RNG seeded with `seed`, so a row's text equals what its prompt
        gives alone (fp32). Finished rows (eos, stop string, length) stop yielding.
        """
        yield from _BatchRun(self, prompts, **_options(locals()))

    def stream(self, prompt: str | list[int] = "", *, max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 presence_penalty: float | None = None, frequency_penalty: float | None = None, seed: int | None = None,
                 stop: str | Sequence[str] = (), stop_at_eos: bool = True) -> Iterator[Piece]:
        """Yield Pieces for one prompt; concatenating piece.text gives the generated text. The keywords are generate()'s."""
        for _, piece in self.stream_batch([prompt], **_options(locals())):
            yield piece

    def generate_batch(self, prompts: list, *, max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 presence_penalty: float | None = None, frequency_penalty: float | None = None, seed: int | None = None,
                 stop: str | Sequence[str] = (), stop_at_eos: bool = True) -> list[Generation]:
        """One Generation a prompt, decoded together (left-padded); the keywords are generate()'s."""
        options = _options(locals())  # first: the arguments alone
        t0 = time.perf_counter()
        first: float | None = None
        texts = [[] for _ in prompts]
        ids = [[] for _ in prompts]
        run = _BatchRun(self, prompts, **options)
        for r, piece in run:
            if first is None:
                first = time.perf_counter() - t0
            texts[r].append(piece.text)
            if piece.token_id >= 0:
                ids[r].append(piece.token_id)
        elapsed = time.perf_counter() - t0
        out = []
        n_new = sum(len(i) for i in ids)
        for r, (prompt_ids, dropped) in enumerate(run.rows):
            stats = {"prompt_tokens": len(prompt_ids), "new_tokens": len(ids[r]), "seconds": elapsed,
                     "time_to_first_token": first, "tokens_per_second": n_new / elapsed if elapsed > 0 else None, "batch": len(prompts)}
            out.append(Generation("".join(texts[r]), ids[r], prompt_ids, run.finish[r], dropped, stats))
        return out

    def generate(self, prompt: str | list[int] = "", *, max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 presence_penalty: float | None = None, frequency_penalty: float | None = None, seed: int | None = None,
                 stop: str | Sequence[str] = (), stop_at_eos: bool = True) -> Generation:
        """Generate a continuation of prompt (text, or token ids; "" starts a story).

        max_new_tokens: tokens to add at most (default: the export's generation defaults).
        temperature: 0 is greedy; top_k, top_p, min_p: the sampling filters (None keeps the export's defaults).
        repetition_penalty, presence_penalty, frequency_penalty: penalties on tokens already in the context.
        seed: the sampling RNG's seed (None: fresh entropy). stop: strings that end the text (not included).
        stop_at_eos: end at <|endoftext|> (False: always run to max_new_tokens).
        """
        return self.generate_batch([prompt], **_options(locals()))[0]

    # ---------------------------------------------------------------- scoring and planning
    def score_ids(self, ids: list[int]) -> Score:
        """Log-probabilities of ids[1:] given the preceding tokens, in non-overlapping context windows."""
        ids = np.asarray(self._check_ids(ids, what="ids to score"), np.int64)
        if ids.size < 2:
            raise ConfigError("need at least 2 tokens to score")
        T = self.config.max_seq_len
        logps: list[float] = []
        for s in range(0, ids.size - 1, T):
            y = ids[s + 1 : s + T + 1]
            x = ids[s : s + y.size]
            logits = run_backbone(self.session, self.config, x[None])[0][0].astype(np.float64)  # (len, V)
            logps.extend(log_softmax(logits)[np.arange(y.size), y].tolist())
        return Score(len(logps), -float(np.sum(logps)), logps)

    def score(self, text: str, *, prepend_eot: bool = True) -> Score:
        """Log-probabilities / PPL of a text (the first token is scored after <|endoftext|> by default)."""
        ids = ([self.eot_id] if prepend_eot else []) + self.encode(text)
        return self.score_ids(ids)

    def plan(self, prompt: str | list[int] = "", *, k: int = 10, content_only: bool = True) -> list[tuple[str, float]]:
        """FSP read-out: the k words the model expects in the next `tau` tokens after the prompt,
        with their predicted probability of appearing (sigmoid of the FSP head). Function words
        (flashlm_core.generation.PLAN_SKIP_WORDS) are skipped unless content_only=False."""
        graphs = self.export.manifest["graphs"]
        if not self._fsp_enabled or not {"fsp_head", "fsp_head_quantized"} & graphs.keys():
            raise CheckpointError(f"{self.export.root}: this export has no FSP head (exported with --no-fsp-head)")
        if self._fsp_session is None:
            name = "fsp_head_quantized" if self.int8 and "fsp_head_quantized" in graphs else "fsp_head"
            self._fsp_session = open_session(str(self.export.graph_path(name)), threads=self.threads)
        ids, _ = self._prompt_ids(prompt)
        engine = self._engine()
        engine.prefill([ids])
        logits = self._fsp_session.run(None, {A.FSP_HIDDEN: engine.hidden[:, None, :].astype(np.float32)})[0][0, 0]
        return plan_words(self.tokenizer, logits, k=k, content_only=content_only)


def load_tokenizer(path: Path, cfg) -> Tokenizer:
    """An export's tokenizer.json, read within a size limit and checked against the graph's vocabulary."""
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes is not a tokenizer.json of this project; re-export")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise CheckpointError(f"{path}: not a tokenizers file ({str(exc)[:200]}); re-export or re-download") from None
    if tok.get_vocab_size() != cfg.vocab_size:
        raise CheckpointError(f"{path}: {tok.get_vocab_size()} tokens, but the graph has {cfg.vocab_size} vocabulary rows: "
                              "the tokenizer is not this model's; re-export")
    return tok


def check_text(text) -> None:
    """ConfigError unless text is a str that encodes as UTF-8 (a command-line argument in another encoding holds
    surrogate escapes)."""
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"the prompt is not valid UTF-8 text (byte {exc.object[exc.start:exc.end]!r} at {exc.start}); "
                          "pass UTF-8 text") from None


def _options(args: dict) -> dict:
    """A public generation method's keyword arguments (its locals() before anything else is bound), to hand on."""
    return {k: v for k, v in args.items() if k not in ("self", "prompt", "prompts")}


class _BatchRun:
    """One batched generation: iterating yields (row, Piece); `rows` (prompt ids, tokens dropped) and
    `finish` ("length" | "eos" | "stop" per row) are set from the start and final once iteration ends."""

    def __init__(self, lm: FlashLM, prompts: list, *, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                 seed: int | None = None, stop: str | Sequence[str] = (), stop_at_eos: bool = True,
                 min_p: float | None = None, presence_penalty: float | None = None, frequency_penalty: float | None = None):
        self.lm = lm
        self.max_new_tokens = lm.generation_defaults["max_new_tokens"] if max_new_tokens is None else max_new_tokens
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        self.params = lm.sampling_params(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                         seed=seed, min_p=min_p, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise ConfigError(f"prompts must be a non-empty list of prompts (str or token ids), got {type(prompts).__name__}")
        if not isinstance(stop_at_eos, bool):
            raise ConfigError(f"stop_at_eos must be True or False, got {stop_at_eos!r}")
        self.stops = stop_strings(stop)
        self.stop_at_eos = stop_at_eos
        self.rows = [lm._prompt_ids(p) for p in prompts]
        self.finish = ["length"] * len(self.rows)

    def __iter__(self) -> Iterator[tuple[int, Piece]]:
        lm = self.lm
        if self.max_new_tokens == 0:
            return
        states = [RowState(lm.tokenizer, ids, self.params, max_new_tokens=self.max_new_tokens, stops=self.stops,
                           stop_at_eos=self.stop_at_eos, eot_id=lm.eot_id) for ids, _ in self.rows]
        engine = lm._engine()
        engine.temperature = top_temperature(self.params)
        logits = engine.prefill([ids for ids, _ in self.rows])
        while True:
            rows = [r for r, s in enumerate(states) if s.finish is None]
            top = engine.top
            if len(rows) < len(states):
                logits = logits[rows]
                top = None if top is None else (top[0][rows], top[1][rows])
            tokens = [lm.eot_id] * len(states)  # finished rows are fed <|endoftext|>
            for r, t in zip(rows, sample_group([states[r] for r in rows], logits, top)):
                tokens[r] = t
                for piece in states[r].accept(t):
                    yield r, piece
                if states[r].finish is not None:
                    self.finish[r] = states[r].finish
            if all(s.finish is not None for s in states):
                break
            logits = engine.step(tokens)


def stop_strings(stop) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings: one string is one stop, not its characters."""
    if stop is not None and not isinstance(stop, (str, list, tuple)):
        raise ConfigError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not isinstance(s, str) for s in stops):
        raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}")
    return tuple(s for s in stops if s)
