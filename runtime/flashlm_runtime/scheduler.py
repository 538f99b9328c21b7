"""Continuous batching: one engine thread steps every request in flight; a request joins at the next step and leaves
when it finishes, is cancelled or runs out of time, without waiting for the others."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from flashlm_core.errors import FlashLMError
from flashlm_runtime.rowstate import RowState, sample_group
from flashlm_runtime.sampling import SamplingParams, top_temperature
from flashlm_runtime.session import log_softmax
from flashlm_runtime.slots import slot_loop

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # RowState's reasons as the OpenAI API names them


class QueueFullError(FlashLMError):
    """More requests wait than the scheduler queues: try again shortly."""


class ShuttingDownError(FlashLMError):
    """The scheduler no longer takes requests (the server is stopping)."""


@dataclass
class TokenEvent:
    """A piece of text; token_id -1 for text held back until the end (it belongs to no new token)."""

    text: str
    token_id: int
    logprob: float | None = None  # of token_id under the model (log-softmax of the raw logits)
    top_logprobs: list[tuple[int, float]] | None = None  # the N likeliest ids and their log-probabilities


@dataclass
class DoneEvent:
    """A job's end: finish_reason "stop" | "length" | "cancelled" | "error" (then `error` says why)."""

    finish_reason: str
    completion_tokens: int
    error: str | None = None
    retry: bool = False  # the error is the server's state, not the request's (it is shutting down): a 503


@dataclass
class Job:
    """One row to generate. `emit(event)` receives its TokenEvents then one DoneEvent, through the scheduler's
    `deliver`; `cancelled` may be set from any thread and the job leaves the batch before the next step."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    emit: Callable[[TokenEvent | DoneEvent], None]
    stops: tuple[str, ...] = ()
    stop_at_eos: bool = True
    logprobs: int | None = None  # top-N log-probabilities with every generated token; None = none
    cancelled: bool = False
    completion_tokens: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    cancelled_at: tuple[float, int] | None = None  # (perf_counter, the engine's step count) when cancel() was called

    def cancel(self, *, step: int) -> None:
        """Mark the job cancelled, from any thread; `step` is the engine's step count now (to measure how soon it leaves)."""
        self.cancelled_at = (time.perf_counter(), step)
        self.cancelled = True


@dataclass
class Metrics:
    """Counters the engine thread keeps (read by the server's /metrics)."""

    jobs_started: int = 0
    jobs_finished: Counter = field(default_factory=Counter)  # finish_reason -> jobs
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    step_seconds: float = 0.0
    step_rows: int = 0  # rows summed over steps (mean batch = step_rows / steps)
    cancels: int = 0  # jobs that left the batch because they were cancelled
    cancel_seconds: float = 0.0  # summed over them: from cancel() to leaving the batch
    cancel_steps_max: int = 0  # the most decode steps any of them ran after cancel()


def _direct(batch: list[tuple[Job, TokenEvent | DoneEvent]]) -> None:
    for job, event in batch:
        job.emit(event)


class Scheduler:
    """Runs jobs on `slots` rows of one decode loop, in arrival order. `deliver(batch)` is called on the engine thread
    with every (job, event) since the last call (a server hands them to its event loop in one call); by default each
    job's emit is called right there. It is called after every step, or with `deliver_every` > 0 once that many seconds
    have passed (a job's first token, its end, and an engine about to idle are delivered at once): each call costs the
    receiving thread the GIL, which the engine thread needs back the moment a graph run ends."""

    def __init__(self, lm, *, slots: int, max_queue: int, deliver: Callable[[list], None] | None = None, deliver_every: float = 0.0):
        self.lm = lm
        self.slots = slots
        self.max_queue = max_queue
        self.deliver = deliver or _direct
        self.loop = slot_loop(lm.session, lm.config, ops=lm.ops, pad_id=lm.eot_id, slots=slots)
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.rows: list[tuple[Job, RowState]] = []  # rows[r] is the job on the loop's row r
        self.keys: list[tuple[SamplingParams, float]] = []  # per row: its params without the seed (rows that share them
        # sample as one group) and the temperature the graph's top outputs must have for it
        self.pending: list[int] = []  # the token each row feeds at the next step
        self._groups: dict[tuple[SamplingParams, float], list[int]] = {}  # rows by keys, kept by _regroup
        self._top_temperature = 1.0
        self._rows_changed = False
        self.metrics = Metrics()
        self.accepting = True
        self.deadline: float | None = None  # once draining: in-flight jobs still running then end with "length"
        self._events: list = []
        self._urgent = False  # an event in _events must go out now
        self.deliver_every = deliver_every
        self._delivered = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="flashlm-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def busy(self) -> int:
        return len(self.rows)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs (all or none): QueueFullError when they do not fit the queue, ShuttingDownError when draining."""
        with self.cond:
            if not self.accepting:
                raise ShuttingDownError("the server is shutting down")
            if len(self.queue) + len(jobs) > self.max_queue + max(0, self.slots - len(self.rows)):
                raise QueueFullError(f"{len(self.queue)} requests are queued (at most {self.max_queue}); try again shortly")
            self.queue.extend(jobs)
            self.cond.notify()

    def wake(self) -> None:
        """Make the engine look at its jobs now (after a job was cancelled)."""
        with self.cond:
            self.cond.notify()

    def drain(self, grace: float) -> None:
        """Stop taking jobs; queued ones end with an error; those in flight have `grace` seconds to finish."""
        with self.cond:
            self.accepting = False
            self.deadline = time.perf_counter() + grace
            waiting, self.queue = list(self.queue), deque()
            self.cond.notify()
        self.deliver([(job, DoneEvent("error", 0, "the server is shutting down", retry=True)) for job in waiting])

    def join(self, timeout: float | None = None) -> None:
        """Wait for the engine thread to end (after drain, once the last job is done)."""
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.rows and self.accepting:
                    self.cond.wait()
                if not self.accepting and not self.rows:
                    return
                admitted = []
                while self.queue and len(self.rows) + len(admitted) < self.slots:
                    admitted.append(self.queue.popleft())
            try:
                for job in admitted:
                    self._join(job)
                self._retire()
                if self.rows:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - any failure ends the jobs in flight, never the engine
                message = str(exc) if isinstance(exc, FlashLMError) else f"{type(exc).__name__}: {exc}"
                for r in reversed(range(len(self.rows))):
                    self._end(r, DoneEvent("error", self.rows[r][0].completion_tokens, message))
            now = time.perf_counter()
            if self._events and (self._urgent or not self.rows or now - self._delivered >= self.deliver_every):
                events, self._events, self._urgent, self._delivered = self._events, [], False, now
                self.deliver(events)

    def _join(self, job: Job) -> None:
        if job.cancelled:
            self.metrics.jobs_finished["cancelled"] += 1
            return
        self.metrics.jobs_started += 1
        self.metrics.prompt_tokens += len(job.prompt_ids)
        state = RowState(self.lm.tokenizer, job.prompt_ids, job.params, max_new_tokens=job.max_new_tokens, stops=job.stops,
                         stop_at_eos=job.stop_at_eos, eot_id=self.lm.eot_id)
        if state.finish is not None:  # max_new_tokens 0
            self._emit(job, DoneEvent("length", 0))
            self.metrics.jobs_finished["length"] += 1
            return
        logits = self.loop.join(job.prompt_ids)[None]  # (1, V)
        self.rows.append((job, state))
        self.keys.append((replace(job.params, seed=None), top_temperature(job.params)))
        self.pending.append(self.lm.eot_id)
        self._rows_changed = True
        r = len(self.rows) - 1
        self._take(r, sample_group([state], logits, None)[0], logits[0])
        if state.finish is not None:
            self._end(r, None)

    def _retire(self) -> None:
        """Rows whose job was cancelled, or whose time ran out while draining, leave the batch."""
        late = self.deadline is not None and time.perf_counter() > self.deadline
        for r in reversed(range(len(self.rows))):
            job, state = self.rows[r]
            if job.cancelled:
                self._note_cancel(job)
                self._end(r, DoneEvent("cancelled", job.completion_tokens))
            elif late:
                for piece in state.end("length"):
                    self._emit(job, TokenEvent(piece.text, -1))
                self._end(r, DoneEvent("length", job.completion_tokens))

    def _note_cancel(self, job: Job) -> None:
        if job.cancelled_at is not None:
            at, step = job.cancelled_at
            self.metrics.cancels += 1
            self.metrics.cancel_seconds += time.perf_counter() - at
            self.metrics.cancel_steps_max = max(self.metrics.cancel_steps_max, self.metrics.steps - step)

    def _regroup(self) -> None:
        """After rows joined or left: the rows that sample alike, and the temperature the graph's top outputs serve."""
        self._groups = {}
        for r, key in enumerate(self.keys):
            self._groups.setdefault(key, []).append(r)
        self._top_temperature = Counter(t for _, t in self.keys).most_common(1)[0][0]
        self._rows_changed = False

    def _step(self) -> None:
        if self._rows_changed:
            self._regroup()
        groups = self._groups
        self.loop.temperature = self._top_temperature  # the graph's top outputs serve the rows at this temperature
        t0 = time.perf_counter()
        logits = self.loop.step(self.pending)
        self.metrics.steps += 1
        self.metrics.step_seconds += time.perf_counter() - t0
        self.metrics.step_rows += len(self.rows)
        top = self.loop.top
        for (_, temperature), rows in groups.items():
            sub_top = sub_logits = None
            if len(groups) == 1:  # the usual case: every row samples alike, no copies
                sub_logits, sub_top = logits, top
            else:
                sub_logits = logits[rows]
                sub_top = None if top is None else (top[0][rows], top[1][rows])
            if temperature != self.loop.temperature:
                sub_top = None
            picks = sample_group([self.rows[r][1] for r in rows], sub_logits, sub_top)
            for r, t in zip(rows, picks):
                self._take(r, t, logits[r])
        for r in reversed(range(len(self.rows))):
            if self.rows[r][1].finish is not None:
                self._end(r, None)

    def _take(self, r: int, token: int, logits: np.ndarray) -> None:
        """Row r's next token: its pieces go out, with log-probabilities when its job asked for them."""
        job, state = self.rows[r]
        self.pending[r] = token
        pieces = state.accept(token)
        for piece in pieces:
            event = TokenEvent(piece.text, piece.token_id)
            if piece.token_id >= 0:
                job.completion_tokens += 1
                self.metrics.completion_tokens += 1
                if job.logprobs is not None:
                    event.logprob, event.top_logprobs = token_logprobs(logits, piece.token_id, job.logprobs)
            self._emit(job, event)

    def _end(self, r: int, done: DoneEvent | None) -> None:
        """Row r leaves the loop (the last row moves into it); its job gets `done` (or its own finish)."""
        job, state = self.rows[r]
        done = done or DoneEvent(FINISH[state.finish], job.completion_tokens)
        self.metrics.jobs_finished[done.finish_reason] += 1
        self._emit(job, done)
        self.loop.leave(r)
        last = len(self.rows) - 1
        self.rows[r], self.pending[r], self.keys[r] = self.rows[last], self.pending[last], self.keys[last]
        self.rows.pop()
        self.pending.pop()
        self.keys.pop()
        self._rows_changed = True

    def _emit(self, job: Job, event: TokenEvent | DoneEvent) -> None:
        self._events.append((job, event))
        if isinstance(event, DoneEvent) or job.completion_tokens <= 1:
            self._urgent = True


def token_logprobs(logits: np.ndarray, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) and the n likeliest (id, log p), descending, from one row of raw logits (V,)."""
    lp = log_softmax(logits.astype(np.float64))
    top = np.argpartition(-lp, n)[:n] if 0 < n < lp.size else np.arange(lp.size if n else 0)
    top = top[np.argsort(-lp[top], kind="stable")]
    return float(lp[token]), [(int(i), float(lp[i])) for i in top]
