"""The OpenAI completions API's shapes: a request body checked into a CompletionRequest, and the response objects,
stream chunks, legacy logprobs objects and error bodies built from the runtime's results (no HTTP here)."""
from __future__ import annotations

import dataclasses
import math
import secrets
import time
from dataclasses import dataclass, field

from flashlm_core.errors import ConfigError
from flashlm_runtime.sampling import SamplingParams

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_LOGPROBS = 20
MAX_STOPS = 16
MAX_PLAN_WORDS = 50


class ApiError(Exception):
    """An error answered as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 2048
    max_choices: int = 64  # prompts x n
    max_prompts: int = 64


@dataclass
class CompletionRequest:
    """A checked /v1/completions body: prompts as token ids (each at most the context unless it is only echoed)."""

    prompts: list[list[int]]  # the ids the model reads (the last max_seq_len of each prompt)
    prompt_texts: list[str]  # what echo returns
    dropped: list[int]  # prompt tokens dropped to fit the context, per prompt
    n: int
    params: SamplingParams
    max_tokens: int
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    logprobs: int | None
    echo: bool
    stop_at_eos: bool
    plan: int
    id: str = field(default_factory=lambda: f"cmpl-{secrets.token_hex(12)}")
    created: int = field(default_factory=lambda: int(time.time()))

    def choice_params(self, j: int) -> SamplingParams:
        """Choice j of each prompt samples with seed + j, so that n choices of a seeded request differ."""
        seed = self.params.seed
        return self.params if seed is None or j == 0 else dataclasses.replace(self.params, seed=seed + j)


def _number(body: dict, name: str, lo: float, hi: float, *, default=None, lo_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > hi or value < lo or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ApiError(400, f"'{name}' must be a number in {bound}, got {value!r}", param=name)
    return float(value)


def _integer(body: dict, name: str, lo: int, hi: int, *, default=None):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be an integer from {lo} to {hi}, got {value!r}", param=name)
    return value


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false, got {value!r}", param=name)
    return value


def _prompts(value) -> list[str | list[int]]:
    """The four prompt forms as a list of prompts, each a string or a list of token ids."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(_is_id(i) for i in value):
            return [list(value)]
        if all(isinstance(p, list) and p and all(_is_id(i) for i in p) for p in value):
            return [list(p) for p in value]
    if value == [] or value == [[]]:
        raise ApiError(400, "'prompt' is empty: send a string (\"\" starts a new story) or a non-empty list of token ids", param="prompt")
    raise ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists", param="prompt")


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_completion(body, *, lm, model_id: str, limits: Limits) -> CompletionRequest:
    """A /v1/completions body as a CompletionRequest, or ApiError (400, or 404 for another model) naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model '{model}' does not exist: this server serves '{model_id}' (GET /v1/models)",
                       param="model", code="model_not_found")
    for name in ("suffix", "logit_bias"):
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server", param=name, code="unsupported")
    n = _integer(body, "n", 1, limits.max_choices, default=1)
    best_of = _integer(body, "best_of", 1, limits.max_choices, default=n)
    if best_of != n:
        raise ApiError(400, "'best_of' other than 'n' is not supported", param="best_of", code="unsupported")
    raw = _prompts(body.get("prompt"))
    if len(raw) > limits.max_prompts or len(raw) * n > limits.max_choices:
        raise ApiError(400, f"{len(raw)} prompts x n={n} choices is more than this server's {limits.max_choices} per request", param="n")
    vocab, context = lm.config.vocab_size, lm.config.max_seq_len
    tails, texts = [], []
    for p in raw:  # the runtime's own window policy: the last max_seq_len tokens, an empty prompt a new story
        try:
            tails.append(lm.prompt_tail(p))
        except ConfigError as exc:  # not UTF-8, or ids outside the vocabulary
            raise ApiError(400, f"'prompt': {exc}", param="prompt") from None
        texts.append(p if isinstance(p, str) else lm.decode(p))
    max_tokens = _integer(body, "max_tokens", 0, limits.max_tokens, default=DEFAULT_MAX_TOKENS)
    logprobs = _integer(body, "logprobs", 0, MAX_LOGPROBS)
    echo = _flag(body, "echo")
    if echo and logprobs is not None and any(t.dropped_chars or t.dropped_tokens for t in tails):
        raise ApiError(400, f"echo with logprobs scores every prompt token, and a prompt is longer than the model's {context}-token "
                            "context: send a shorter prompt (a window slide would drop tokens you asked to score)", param="prompt",
                       code="context_length_exceeded")
    stop = body.get("stop")
    stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", param="stop")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise ApiError(400, "'stream_options' must be an object, and is only allowed with stream: true", param="stream_options")
    include_usage = _flag(options or {}, "include_usage")
    defaults = lm.generation_defaults
    repeat = body.get("repeat_penalty", body.get("repetition_penalty"))
    try:
        params = SamplingParams(
            temperature=_number(body, "temperature", 0, 100, default=defaults["temperature"]),
            top_p=_number(body, "top_p", 0, 1, default=defaults["top_p"], lo_open=True),
            top_k=_integer(body, "top_k", 0, vocab, default=defaults["top_k"]),
            min_p=_number(body, "min_p", 0, 1, default=0.0),
            repetition_penalty=_number({"repeat_penalty": repeat}, "repeat_penalty", 0, 10, default=defaults["repetition_penalty"],
                                       lo_open=True),
            presence_penalty=_number(body, "presence_penalty", -2, 2, default=0.0),
            frequency_penalty=_number(body, "frequency_penalty", -2, 2, default=0.0),
            seed=_integer(body, "seed", 0, 2**63 - 1 - limits.max_choices),
        )
    except ConfigError as exc:  # a rule of SamplingParams' own beyond the ranges above
        raise ApiError(400, str(exc)) from None
    return CompletionRequest(
        prompts=[t.ids for t in tails], prompt_texts=texts, dropped=[t.dropped_tokens or 0 for t in tails],
        n=n, params=params, max_tokens=max_tokens, stops=tuple(s for s in stops if s), stream=stream, include_usage=include_usage,
        logprobs=logprobs, echo=echo, stop_at_eos=not _flag(body, "ignore_eos"), plan=_integer(body, "plan", 0, MAX_PLAN_WORDS, default=0),
    )


@dataclass
class LogprobsBuilder:
    """The legacy completions `logprobs` object of one choice, filled token by token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, token: str, logprob: float | None, top: dict | None, offset: int) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(offset)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


def choice(index: int, text: str, *, logprobs: dict | None = None, finish_reason: str | None = None, plan=None) -> dict:
    out = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
    if plan is not None:
        out["plan"] = plan  # FlashLM's extension: the FSP head's words expected in the next tau tokens
    return out


def completion(req: CompletionRequest, model_id: str, choices: list[dict], usage: dict | None, *, chunk: bool = False) -> dict:
    out = {"id": req.id, "object": "text_completion", "created": req.created, "model": model_id, "choices": choices}
    if not chunk or usage is not None or req.include_usage:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int, dropped: int) -> dict:
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    if dropped:
        out["prompt_tokens_dropped"] = dropped  # FlashLM's extension: tokens cut from the front to fit the context
    return out
