"""flashlm-serve through real clients (the openai package, curl, raw sockets): the API's shapes, continuous batching,
exactness against the library and flashlm-run, and faults (bad input, slow or vanishing clients, a full queue, SIGTERM)."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from flashlm_core.generation import SAMPLE_PROMPTS
from flashlm_runtime import FlashLM
from node_clients import missing, need_module

BIN = Path(sys.executable).parent
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@contextmanager
def running(*args: str, env: dict | None = None):
    """flashlm-serve on a free port; yields (process, "http://host:port")."""
    proc = subprocess.Popen([str(BIN / "flashlm-serve"), "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://([\d.]+):(\d+)/v1", line)
        if not found:
            proc.kill()
            pytest.fail(f"flashlm-serve did not start: {line}{proc.stderr.read()}")
        yield proc, f"http://{found.group(1)}:{found.group(2)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def request(url: str, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def complete(url: str, body: dict, headers: dict | None = None) -> dict:
    status, _, raw = request(url, "POST", "/v1/completions", body, headers)
    assert status == 200, raw
    return json.loads(raw)


def metric(url: str, name: str) -> float:
    text = request(url, "GET", "/metrics")[2].decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"flashlm_{name}") and not line.startswith("#"))


@pytest.fixture(scope="module")
def server():
    with running("--slots", "4") as (_, url):
        yield url


@pytest.fixture(scope="module")
def lm():
    return FlashLM()


def test_the_openai_client_lists_completes_streams_and_scores(server, lm):
    openai = need_module("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["flashlm-v10-fsp"]
    for prompt in SAMPLE_PROMPTS:
        want = lm.generate(prompt, temperature=0, max_new_tokens=40)
        r = client.completions.create(model="flashlm-v10-fsp", prompt=prompt, max_tokens=40, temperature=0)
        assert r.object == "text_completion" and r.choices[0].text == want.text
        assert r.choices[0].finish_reason == FINISH[want.finish_reason]
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(want.prompt_ids), len(want.token_ids))
        chunks = list(client.completions.create(model="flashlm-v10-fsp", prompt=prompt, max_tokens=40, temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == FINISH[want.finish_reason]
    # scoring as lm-evaluation-harness does it: echo + logprobs, no new tokens
    text = "Once upon a time, there was a little dog named Max."
    r = client.completions.create(model="flashlm-v10-fsp", prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp, ids = r.choices[0].logprobs, lm.encode(text)
    assert r.choices[0].text == text and "".join(lp.tokens) == text and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = lm.score(text, prepend_eot=False).token_logprobs
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], want)) < 1e-4
    assert lp.text_offset == [len(lm.decode(ids[:i])) for i in range(len(ids))]
    assert all(max(top.values()) >= got - 1e-9 for top, got in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))


def test_a_request_alone_returns_flashlm_runs_tokens_int8(server):
    for prompt, seed in (("Once upon a time", 5), ("The little girl", 11)):
        run = subprocess.run([str(BIN / "flashlm-run"), "--prompt", prompt, "--seed", str(seed), "--max-new-tokens", "80", "--json"],
                             capture_output=True, text=True, timeout=120)
        want = json.loads(run.stdout)
        got = complete(server, {"prompt": prompt, "seed": seed, "max_tokens": 80})  # the export's sampling defaults, as flashlm-run
        assert got["choices"][0]["text"] == want["text"]
        assert got["usage"]["completion_tokens"] == len(want["token_ids"])


@pytest.mark.parametrize("ops", ["plain", "contrib"])
def test_fp32_greedy_tokens_do_not_depend_on_what_else_is_in_flight(ops, request, lm):
    """8 requests of different lengths on 3 slots: rows join and leave the running batch (and one slides its window)
    while the others decode; each returns what its prompt gives alone."""
    folder = request.getfixturevalue("tiny_export" if ops == "plain" else "tiny_contrib_export")
    alone = FlashLM(folder, int8=False)
    long_prompt = alone.decode(list(range(1, 251)))
    prompts = [("Once upon a time", 60), ("A cat sat", 25), ("The little girl", 90), (long_prompt, 30), ("Tom", 10),
               ("She was happy", 70), ("The dog ran", 40), ("One day", 55)]
    with running("--model", str(folder), "--fp32", "--slots", "3") as (_, url):
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(complete, url, {"prompt": p, "max_tokens": m, "temperature": 0, "ignore_eos": True}) for p, m in prompts]
            results = [f.result() for f in futures]
        steps, rows = metric(url, "step_seconds_count"), metric(url, "step_rows_total")
    for (prompt, m), r in zip(prompts, results):
        want = alone.generate(prompt, temperature=0, max_new_tokens=m, stop_at_eos=False)
        assert r["choices"][0]["text"] == want.text, prompt[:30]
        assert r["usage"]["completion_tokens"] == m
    assert rows > steps  # rows really shared steps


def test_curl_reads_the_server_sent_events(server, lm):
    curl = shutil.which("curl")
    if curl is None:
        missing("curl")
    body = json.dumps({"prompt": "A cat sat", "max_tokens": 30, "temperature": 0, "stream": True})
    out = subprocess.run([curl, "-sN", f"{server}/v1/completions", "-H", "Content-Type: application/json", "-d", body],
                         capture_output=True, text=True, timeout=120).stdout
    events = [e for e in out.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]" and out.endswith("\n\n")
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == lm.generate("A cat sat", temperature=0, max_new_tokens=30).text
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1]) and chunks[-1]["choices"][0]["finish_reason"]


def test_n_choices_several_prompts_and_token_id_prompts(server, lm):
    ids = lm.encode("The little girl")
    r = complete(server, {"prompt": [ids, lm.encode("A cat sat")], "n": 2, "seed": 3, "max_tokens": 20, "echo": True})
    texts = [c["text"] for c in r["choices"]]
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert texts[0].startswith("The little girl") and texts[2].startswith("A cat sat") and texts[0] != texts[1]
    # (choice j samples with seed + j; its text equals the library's only alone or in fp32: int8 scales are per batch)
    assert r["usage"]["prompt_tokens"] == len(ids) + len(lm.encode("A cat sat"))
    plan = complete(server, {"prompt": "Once upon a time", "max_tokens": 1, "plan": 5})["choices"][0]["plan"]
    assert [w for w, _ in plan] == [w for w, _ in lm.plan("Once upon a time", k=5)]


BAD = [
    (b"{not json", 400, "invalid_json", None),
    (b"[]", 400, None, None),
    ({"prompt": 5}, 400, None, "prompt"),
    ({"prompt": []}, 400, None, "prompt"),
    ({"prompt": [[1, 2], "x"]}, 400, None, "prompt"),
    ({"prompt": [99999]}, 400, None, "prompt"),
    ({"prompt": "x", "max_tokens": "ten"}, 400, None, "max_tokens"),
    ({"prompt": "x", "max_tokens": 100_000}, 400, None, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, 400, None, "temperature"),
    ({"prompt": "x", "temperature": True}, 400, None, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, None, "top_p"),
    ({"prompt": "x", "min_p": 2}, 400, None, "min_p"),
    ({"prompt": "x", "presence_penalty": 3}, 400, None, "presence_penalty"),
    ({"prompt": "x", "n": 0}, 400, None, "n"),
    ({"prompt": "x", "stop": [1]}, 400, None, "stop"),
    ({"prompt": "x", "logprobs": 50}, 400, None, "logprobs"),
    ({"prompt": "x", "seed": -1}, 400, None, "seed"),
    ({"prompt": "x", "stream": "yes"}, 400, None, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, None, "stream_options"),
    ({"prompt": "x", "suffix": "y"}, 400, "unsupported", "suffix"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model_not_found", "model"),
    ({"prompt": "Once upon a time " * 100, "echo": True, "logprobs": 1, "max_tokens": 0}, 400, "context_length_exceeded", "prompt"),
    (b"{" + b" " * 1_100_000 + b"}", 413, "body_too_large", None),
]


@pytest.mark.parametrize("body, status, code, param", BAD, ids=[f"{i}-{s}" for i, (_, s, _, _) in enumerate(BAD)])
def test_bad_requests_get_an_openai_error_body_and_the_server_keeps_serving(server, body, status, code, param):
    got, _, raw = request(server, "POST", "/v1/completions", body)
    error = json.loads(raw)["error"]
    assert got == status and set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code and error["param"] == param
    assert complete(server, {"prompt": "Once", "max_tokens": 3, "ignore_eos": True})["choices"][0]["finish_reason"] == "length"


def test_unknown_routes_and_overlong_prompts(server, lm):
    status, _, raw = request(server, "GET", "/v1/nothing")
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    assert request(server, "GET", "/v1/completions")[0] == 405
    # a prompt over the context: the runtime's window policy, its last 256 tokens, and the count dropped in usage
    prompt = "Once upon a time " * 100
    r = complete(server, {"prompt": prompt, "max_tokens": 10, "temperature": 0})
    ids = lm.encode(prompt)
    assert r["usage"]["prompt_tokens"] == 256 and r["usage"]["prompt_tokens_dropped"] == len(ids) - 256
    assert r["choices"][0]["text"] == lm.generate(ids[-256:], temperature=0, max_new_tokens=10).text


def _stream_then_vanish(url: str, chunks: int) -> None:
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        seen = b""
        while seen.count(b"data: ") < chunks:
            seen += sock.recv(65536)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    cancelled = metric(server, 'jobs_finished_total{finish_reason="cancelled"}')
    _stream_then_vanish(server, chunks=5)
    for _ in range(200):  # bounded wait for the engine's next steps
        if metric(server, "slots_busy") == 0 and metric(server, 'jobs_finished_total{finish_reason="cancelled"}') == cancelled + 1:
            break
        time.sleep(0.05)
    assert metric(server, "slots_busy") == 0
    assert metric(server, 'jobs_finished_total{finish_reason="cancelled"}') == cancelled + 1
    assert metric(server, "completion_tokens_total") > 0
    assert metric(server, "cancel_seconds_count") >= 1 and metric(server, "cancel_steps_max") <= 1  # gone within one step


@pytest.fixture(scope="module")
def strict_server():
    """One slot, one queued request, 1 s to send a request, an API key from the environment."""
    with running("--slots", "1", "--max-queue", "1", "--request-timeout", "1", env={"FLASHLM_API_KEY": "sesame"}) as (_, url):
        yield url


AUTH = {"Authorization": "Bearer sesame"}


def test_the_api_key_guards_v1_and_health_stays_open(strict_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        status, _, raw = request(strict_server, "GET", "/v1/models", headers=headers)
        assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
    assert request(strict_server, "GET", "/v1/models", headers=AUTH)[0] == 200
    status, headers, _ = request(strict_server, "GET", "/health", headers={"Origin": "http://elsewhere.example"})
    assert status == 200 and not any(k.lower().startswith("access-control") for k in headers)  # no CORS unless asked


def test_a_full_queue_answers_429_with_retry_after(strict_server):
    status, headers, raw = request(strict_server, "POST", "/v1/completions", {"prompt": "x", "n": 3, "max_tokens": 5}, AUTH)
    assert status == 429 and {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
    assert json.loads(raw)["error"]["code"] == "queue_full"
    assert complete(strict_server, {"prompt": "x", "max_tokens": 5, "ignore_eos": True}, AUTH)["usage"]["completion_tokens"] == 5


def test_slow_clients_are_cut_off(strict_server):
    host, port = strict_server.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # headers that never end: the connection closes
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        assert sock.recv(1024) == b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # a body that never ends: 408
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Length: 100\r\n\r\n{\"pro")
        reply = b""
        while b'"code"' not in reply:
            part = sock.recv(65536)
            assert part, reply
            reply += part
        reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and '"code":"request_timeout"' in reply
    assert request(strict_server, "GET", "/health")[0] == 200


def test_sigterm_ends_in_flight_requests_with_a_finish_reason_and_exits_0():
    with running("--slots", "1", "--shutdown-grace", "1") as (proc, url):
        host, port = url.split("//")[1].split(":")
        queued: dict = {}
        body = json.dumps({"prompt": "Once", "max_tokens": 2048, "ignore_eos": True, "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            seen = b""
            while seen.count(b"data: ") < 3:
                seen += sock.recv(65536)
            waiter = threading.Thread(target=lambda: queued.update(r=request(url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 5})))
            waiter.start()
            for _ in range(200):
                if metric(url, "queue_depth") == 1:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            while not seen.endswith(b"data: [DONE]\n\n") and not seen.endswith(b"0\r\n\r\n"):
                part = sock.recv(65536)
                if not part:
                    break
                seen += part
        waiter.join(timeout=60)
        assert proc.wait(timeout=60) == 0
    finishes = re.findall(rb'"finish_reason":"(\w+)"', seen)
    assert finishes == [b"length"] and b"data: [DONE]" in seen  # cut at the grace period, still well-formed
    status, _, raw = queued["r"]
    assert status == 503 and json.loads(raw)["error"]["code"] == "shutting_down"


def test_flashlm_serve_refuses_bad_options_in_one_line(tmp_path):
    for args, message in ((["--slots", "0"], "--slots must be from 1 to 64"), (["--model", str(tmp_path)], "error: "),
                          (["--api-key", " "], "--api-key (or FLASHLM_API_KEY) is empty"),
                          (["--stream-interval", "-1"], "--stream-interval must be from 0 to 1000 milliseconds")):
        r = subprocess.run([str(BIN / "flashlm-serve"), "--port", "0", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    with running() as (_, url):  # a port in use
        port = url.rsplit(":", 1)[1]
        r = subprocess.run([str(BIN / "flashlm-serve"), "--port", port], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_streamed_tokens_reach_the_event_loop_in_one_hand_over_per_interval():
    """The engine thread hands its events over every step with no interval; with one far longer than the run, only the
    first token (time to first token) and the end go out on their own, everything between in one hand-over."""
    from flashlm_runtime.scheduler import DoneEvent, Job, Scheduler

    lm = FlashLM()
    for interval, most in ((0.0, None), (3600.0, 3)):
        handovers: list[int] = []
        done = threading.Event()

        def deliver(batch, handovers=handovers, done=done):
            handovers.append(len(batch))
            if any(isinstance(event, DoneEvent) for _, event in batch):
                done.set()

        scheduler = Scheduler(lm, slots=2, max_queue=1, deliver=deliver, deliver_every=interval)
        scheduler.submit([Job(lm.encode("Once upon a time"), lm.sampling_params(seed=0), 24, emit=lambda e: None, stop_at_eos=False)])
        assert done.wait(timeout=120)
        scheduler.drain(0)
        scheduler.join(timeout=30)
        assert sum(handovers) >= 25  # 24 tokens (and any held-back text) and the end
        if most is None:
            assert len(handovers) >= 24  # every step's token on its own
        else:
            assert len(handovers) <= most


def test_the_load_page_is_what_the_results_give():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "serve_report.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
