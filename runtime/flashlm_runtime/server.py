"""flashlm-serve's HTTP side: an OpenAI-compatible completions API on starlette + uvicorn over the Scheduler."""
from __future__ import annotations

import asyncio
import hmac
import json
import socket
import sys
import time

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from flashlm_runtime import openai_api as api
from flashlm_runtime.scheduler import DoneEvent, Job, QueueFullError, Scheduler, ShuttingDownError
from flashlm_runtime.session import log_softmax, run_backbone

MAX_BODY_BYTES = 1_000_000  # a request body larger than this is a 413 (256 ids or a long prompt are a few kB)
REQUEST_TIMEOUT = 10.0  # seconds for a request's headers to arrive, and then for its body
RETRY_AFTER = 1  # seconds a client told "queue full" should wait
SWITCH_INTERVAL = 0.0002  # seconds a thread may hold the GIL while another waits for it


def json_error(exc: api.ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


class Service:
    """What the routes share: the model, its scheduler, the request limits and the counters the routes keep."""

    def __init__(self, lm, scheduler: Scheduler, *, model_id: str, limits: api.Limits, max_body: int = MAX_BODY_BYTES,
                 body_timeout: float = REQUEST_TIMEOUT):
        self.lm, self.scheduler, self.model_id, self.limits = lm, scheduler, model_id, limits
        self.max_body, self.body_timeout = max_body, body_timeout
        self.created = int(time.time())
        self.statuses: dict[int, int] = {}

    async def read_json(self, request: Request):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise api.ApiError(413, f"the request body is larger than this server's {self.max_body:,} bytes", code="body_too_large")

        async def body() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise api.ApiError(413, f"the request body is larger than this server's {self.max_body:,} bytes", code="body_too_large")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            raw = await asyncio.wait_for(body(), self.body_timeout)
        except asyncio.TimeoutError:
            raise api.ApiError(408, f"the request body did not arrive within {self.body_timeout:g} s", code="request_timeout") from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise api.ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


# ---------------------------------------------------------------------------------------------------- routes
async def health(request: Request) -> Response:
    s: Service = request.app.state.service
    if not s.scheduler.accepting:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    return JSONResponse({"status": "ok", "slots": s.scheduler.slots, "slots_busy": s.scheduler.busy, "queued": s.scheduler.queued})


def _model_object(s: Service) -> dict:
    return {"id": s.model_id, "object": "model", "created": s.created, "owned_by": "flashlm"}


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_object(request.app.state.service)]})


async def model(request: Request) -> Response:
    s: Service = request.app.state.service
    if request.path_params["model"] != s.model_id:
        raise api.ApiError(404, f"the model '{request.path_params['model']}' does not exist: this server serves '{s.model_id}'",
                           param="model", code="model_not_found")
    return JSONResponse(_model_object(s))


async def metrics(request: Request) -> Response:
    s: Service = request.app.state.service
    m = s.scheduler.metrics
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP flashlm_{name} {help_}", f"# TYPE flashlm_{name} {kind}"])
        lines.extend(f"flashlm_{name}{labels} {value}" for labels, value in samples)

    metric("http_requests_total", "counter", "HTTP responses by status code.",
           [(f'{{code="{code}"}}', n) for code, n in sorted(s.statuses.items())] or [("", 0)])
    metric("jobs_started_total", "counter", "Completion rows that entered a slot.", [("", m.jobs_started)])
    metric("jobs_finished_total", "counter", "Completion rows that ended, by finish reason.",
           [(f'{{finish_reason="{k}"}}', v) for k, v in sorted(m.jobs_finished.items())] or [("", 0)])
    metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", m.prompt_tokens)])
    metric("completion_tokens_total", "counter", "Tokens generated.", [("", m.completion_tokens)])
    metric("queue_depth", "gauge", "Rows waiting for a slot.", [("", s.scheduler.queued)])
    metric("slots_busy", "gauge", "Slots generating now.", [("", s.scheduler.busy)])
    metric("slots", "gauge", "Slots (rows of the running batch).", [("", s.scheduler.slots)])
    metric("step_seconds", "summary", "Time of one decode step over the batch.", [("_sum", m.step_seconds), ("_count", m.steps)])
    metric("step_rows_total", "counter", "Rows summed over decode steps (mean batch = this / step_seconds_count).", [("", m.step_rows)])
    metric("cancel_seconds", "summary", "From a request's cancellation (its client gone) to its row leaving the batch.",
           [("_sum", m.cancel_seconds), ("_count", m.cancels)])
    metric("cancel_steps_max", "gauge", "The most decode steps a cancelled row ran after its cancellation.", [("", m.cancel_steps_max)])
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def completions(request: Request) -> Response:
    s: Service = request.app.state.service
    body = await s.read_json(request)
    req = api.parse_completion(body, lm=s.lm, model_id=s.model_id, limits=s.limits)
    run = CompletionRun(s, req)
    await run.prepare()
    if req.stream:
        return StreamResponse(run)
    return JSONResponse(await run.collect(request.receive))


# ---------------------------------------------------------------------------------------------------- one request
class CompletionRun:
    """One /v1/completions request: its jobs (prompts x n) on the scheduler, their events on this event loop."""

    def __init__(self, s: Service, req: api.CompletionRequest):
        self.s, self.req = s, req
        self.events: asyncio.Queue = asyncio.Queue()
        self.jobs: list[Job] = []
        self.texts = [""] * (len(req.prompts) * req.n)  # generated text per choice
        self.finish: list[str | None] = [None] * len(self.texts)
        self.logprobs = [api.LogprobsBuilder() if req.logprobs is not None else None for _ in self.texts]
        self.offsets = [0] * len(self.texts)  # text_offset of the next generated token, per choice
        self.plans: list | None = None
        self.echo: list[dict | None] = [None] * len(req.prompts)  # per prompt: its echoed logprobs
        self.error: str | None = None
        self.retry = False  # the error is a 503 (shutting down), not a 500

    async def prepare(self) -> None:
        """Prompt logprobs (echo) and plans, then the jobs onto the scheduler (a 429/503 before anything is sent)."""
        req, lm = self.req, self.s.lm
        if req.echo and req.logprobs is not None:
            self.echo = [await asyncio.to_thread(prompt_logprobs, lm, ids, req.logprobs) for ids in req.prompts]
        if req.plan:
            self.plans = [await asyncio.to_thread(lm.plan, ids, k=req.plan) for ids in req.prompts]
        for c in range(len(self.texts)):
            p = c // req.n
            self.offsets[c] = len(req.prompt_texts[p]) if req.echo else 0
        if req.max_tokens == 0:
            self.finish = ["length"] * len(self.texts)
            return
        for c in range(len(self.texts)):
            job = Job(req.prompts[c // req.n], req.choice_params(c % req.n), req.max_tokens, emit=self._emitter(c),
                      stops=req.stops, stop_at_eos=req.stop_at_eos, logprobs=req.logprobs)
            self.jobs.append(job)
        try:
            self.s.scheduler.submit(self.jobs)
        except QueueFullError as exc:
            raise api.ApiError(429, str(exc), kind="rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER)}) from None
        except ShuttingDownError as exc:
            raise api.ApiError(503, str(exc), kind="server_error", code="shutting_down", headers={"Retry-After": str(RETRY_AFTER)}) from None

    def _emitter(self, c: int):
        put = self.events.put_nowait
        return lambda event: put((c, event))

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel(step=self.s.scheduler.metrics.steps)
        self.s.scheduler.wake()

    def _apply(self, c: int, event) -> dict | None:
        """Fold one event into choice c; returns the stream chunk's choice for it (None: nothing to send)."""
        if isinstance(event, DoneEvent):
            if event.finish_reason == "error":
                self.error, self.retry = event.error, event.retry
            self.finish[c] = event.finish_reason if event.finish_reason in ("stop", "length") else "length"
            return api.choice(c, "", finish_reason=self.finish[c])
        self.texts[c] += event.text
        lp = None
        if self.logprobs[c] is not None and event.token_id >= 0:
            lm = self.s.lm
            entry = (_token_text(lm, event.token_id), event.logprob,
                     {_token_text(lm, i): v for i, v in event.top_logprobs} if self.req.logprobs else {}, self.offsets[c])
            part = api.LogprobsBuilder()
            part.add(*entry)
            self.logprobs[c].add(*entry)
            lp = part.to_dict()
        self.offsets[c] += len(event.text)
        if not event.text and lp is None:
            return None
        return api.choice(c, event.text, logprobs=lp)

    def _echo_choice(self, c: int) -> dict:
        p = c // self.req.n
        return api.choice(c, self.req.prompt_texts[p], logprobs=self.echo[p], plan=self.plans[p] if self.plans else None)

    def _usage(self) -> dict:
        req = self.req
        completion_tokens = sum(job.completion_tokens for job in self.jobs)
        return api.usage(sum(len(p) for p in req.prompts), completion_tokens, sum(req.dropped))

    async def collect(self, receive) -> dict:
        """Wait for every job (cancelling them if the client goes away) and build the completion object."""
        watcher = asyncio.create_task(_disconnect(receive, self))
        try:
            while any(f is None for f in self.finish):
                c, event = await self.events.get()
                if c < 0:
                    raise asyncio.CancelledError  # the client is gone
                self._apply(c, event)
        finally:
            watcher.cancel()
        if self.error and self.retry:
            raise api.ApiError(503, self.error, kind="server_error", code="shutting_down", headers={"Retry-After": str(RETRY_AFTER)})
        if self.error:
            raise api.ApiError(500, f"generation failed: {self.error}", kind="server_error", code="generation_failed")
        req, choices = self.req, []
        for c in range(len(self.texts)):
            p = c // req.n
            text = (req.prompt_texts[p] if req.echo else "") + self.texts[c]
            lp = None
            if self.logprobs[c] is not None:
                lp = api.LogprobsBuilder()
                if req.echo:
                    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                        getattr(lp, key).extend(self.echo[p][key])
                for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    getattr(lp, key).extend(getattr(self.logprobs[c], key))
                lp = lp.to_dict()
            choices.append(api.choice(c, text, logprobs=lp, finish_reason=self.finish[c], plan=self.plans[p] if self.plans else None))
        return api.completion(req, self.s.model_id, choices, self._usage())

    async def chunks(self):
        """The SSE byte strings of a streamed completion: echo first, then pieces as they come, usage, [DONE]."""
        req, model_id = self.req, self.s.model_id
        template = _sse(api.completion(req, model_id, [api.choice(0, "\0")], None, chunk=True))
        head, tail = template.split(b'"\\u0000","index":0')
        if req.echo or self.plans:
            first = [self._echo_choice(c) if req.echo else api.choice(c, "", plan=self.plans[c // req.n]) for c in range(len(self.texts))]
            yield _sse(api.completion(req, model_id, first, None, chunk=True))
        while any(f is None for f in self.finish):
            batch = [await self.events.get()]
            while not self.events.empty():  # what else has arrived goes out in the same write
                batch.append(self.events.get_nowait())
            out = []
            for c, event in batch:
                if c < 0:
                    return
                piece = self._apply(c, event)
                if piece is None:
                    continue
                if piece["logprobs"] is None and piece["finish_reason"] is None and "plan" not in piece:
                    # the hot path, once per token: the chunk's constant parts rendered once (what _sse would write)
                    out.append(b"".join((head, json.dumps(piece["text"]).encode(), b',"index":%d' % c, tail)))
                else:
                    out.append(_sse(api.completion(req, model_id, [piece], None, chunk=True)))
            if self.error:
                out.append(_sse(api.error_body(f"generation failed: {self.error}", kind="server_error", code="generation_failed")))
                self.error = None
            yield b"".join(out)
        if req.include_usage:
            yield _sse(api.completion(req, model_id, [], self._usage(), chunk=True))
        yield b"data: [DONE]\n\n"


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _token_text(lm, token_id: int) -> str:
    return lm.tokenizer.decode([token_id], skip_special_tokens=False)


async def _disconnect(receive, run: CompletionRun) -> None:
    """Wait for the client to go away; then its jobs leave the batch at the next step."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            run.cancel()
            run.events.put_nowait((-1, None))
            return


class StreamResponse(Response):
    """Server-sent events of a CompletionRun; a client that disconnects cancels its jobs."""

    def __init__(self, run: CompletionRun):  # no Response.__init__: it would set content-length: 0
        self.status_code, self.background, self.run = 200, None, run
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.create_task(_disconnect(receive, self.run))
        chunks = self.run.chunks()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            pass
        finally:
            watcher.cancel()
            await chunks.aclose()
            self.run.cancel()  # no-op for finished jobs


def prompt_logprobs(lm, ids: list[int], n: int) -> dict:
    """The echoed prompt's legacy logprobs object: each token after the first scored given those before it (one forward
    over all but the last token, as FlashLM.score_ids runs it; the prompt at most the context); the first token's
    logprob and top_logprobs are null."""
    if len(ids) > 1:
        lp = log_softmax(run_backbone(lm.session, lm.config, np.asarray([ids[:-1]], np.int64))[0][0].astype(np.float64))  # (T-1, V)
    out = api.LogprobsBuilder()
    for i, token in enumerate(ids):
        offset = len(lm.decode(ids[:i]))
        if i == 0:
            out.add(_token_text(lm, token), None, None, offset)
            continue
        row = lp[i - 1]
        top = row.argsort()[::-1][:n] if n else []
        out.add(_token_text(lm, token), float(row[token]), {_token_text(lm, int(t)): float(row[t]) for t in top}, offset)
    return out.to_dict()


# ---------------------------------------------------------------------------------------------------- the app
def _auth_and_count(app, service: Service, api_key: str | None):
    """ASGI middleware: every /v1/ route needs `Authorization: Bearer <api_key>` when a key is set (compared in constant
    time); every response's status is counted for /metrics."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                service.statuses[message["status"]] = service.statuses.get(message["status"], 0) + 1
            await send(message)

        if expected is not None and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                response = json_error(api.ApiError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                                                   kind="authentication_error", code="invalid_api_key"))
                return await response(scope, receive, counting_send)
        return await app(scope, receive, counting_send)

    return middleware


async def _api_error(request: Request, exc: api.ApiError) -> Response:
    return json_error(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(api.error_body(f"{request.method} {request.url.path}: {exc.detail}", kind=kind), status_code=exc.status_code)


def create_app(lm, scheduler: Scheduler, *, model_id: str, api_key: str | None = None, cors_origins: tuple[str, ...] = (),
               limits: api.Limits | None = None, request_timeout: float = REQUEST_TIMEOUT):
    """The ASGI app: /health, /metrics, /v1/models, /v1/completions over `scheduler`, whose `deliver` must hand events to
    the app's event loop (as `serve` sets it up)."""
    service = Service(lm, scheduler, model_id=model_id, limits=limits or api.Limits(), body_timeout=request_timeout)
    routes = [Route("/health", health), Route("/metrics", metrics), Route("/v1/models", models),
              Route("/v1/models/{model:path}", model), Route("/v1/completions", completions, methods=["POST"])]
    middleware = [Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if cors_origins else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={api.ApiError: _api_error, HTTPException: _http_error})
    app.state.service = service
    return _auth_and_count(app, service, api_key)


class TimedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers (uvicorn has none: a client that sends its
    headers a byte at a time would hold a connection open for ever)."""

    header_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete and self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._header_deadline is None and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)


class _Server(uvicorn.Server):
    """uvicorn's server whose SIGTERM / SIGINT first drains the scheduler, and then exits 0 (uvicorn re-raises the
    caught signal once it is done, which would end the process by that signal)."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float, on_listen):
        super().__init__(config)
        self.scheduler, self.grace, self.on_listen = scheduler, grace, on_listen

    def handle_exit(self, sig, frame) -> None:
        self.scheduler.drain(self.grace)
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            self.on_listen(sockets[0].getsockname()[:2])


def serve(lm, *, host: str, port: int, slots: int, max_queue: int, api_key: str | None, cors_origins: tuple[str, ...],
          grace: float, model_id: str, on_listen, request_timeout: float = REQUEST_TIMEOUT,
          stream_interval: float) -> None:
    """Run the server until SIGTERM / SIGINT: in-flight requests get `grace` seconds, then end with finish_reason
    "length"; queued ones get a 503. Streamed tokens go to the event loop every `stream_interval` seconds."""
    holder: dict = {}

    def deliver(batch):  # from the engine thread: one hand-over per step to the event loop
        loop = holder.get("loop")
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_dispatch, batch)

    scheduler = Scheduler(lm, slots=slots, max_queue=max_queue, deliver=deliver, deliver_every=stream_interval)
    app = create_app(lm, scheduler, model_id=model_id, api_key=api_key, cors_origins=cors_origins, request_timeout=request_timeout)
    protocol = type("TimedH11", (TimedH11,), {"header_timeout": request_timeout})

    async def lifespan_app(scope, receive, send):
        if scope["type"] == "lifespan":
            holder["loop"] = asyncio.get_running_loop()
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    scheduler.drain(0)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return await app(scope, receive, send)

    config = uvicorn.Config(lifespan_app, host=host, port=port, http=protocol, lifespan="on", log_level="warning",
                            timeout_keep_alive=5, timeout_graceful_shutdown=int(grace) + 5, access_log=False)
    server = _Server(config, scheduler, grace, on_listen)
    # The engine thread and the event loop share the GIL: the engine must get it back as soon as a graph run ends, not
    # after the default switch interval (which showed as a tail in inter-token latency, bench/serve_load.py).
    sys.setswitchinterval(SWITCH_INTERVAL)
    server.run(sockets=[listen_socket(host, port)])
    scheduler.join(timeout=grace + 5)


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (OSError here, before any model work is lost, when the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _dispatch(batch) -> None:
    for job, event in batch:
        job.emit(event)
