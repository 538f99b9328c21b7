"""flashlm-serve under load: N concurrent streaming clients, and one client against the library in the same run.

    python bench/serve_load.py [--clients 1 2 4 8 16 64] [--slots 8] [--stream-interval MS] [--repeats 3] [--json results/bench/serve_load.json]

The server (int8, 1 intra-op thread, --slots 8, the bundled model) runs in its own process; the clients are threads
of this one, on raw sockets, each sending one streamed request of 200 tokens (--ignore-eos, the export's sampling,
seed = client) and timing the bytes as they arrive: time to first token (request sent -> first token's chunk),
inter-token latency (between token chunks of one stream) and aggregate tokens/s (all tokens / first send to last
[DONE]). Client counts are interleaved round-robin over the repeats and medians taken. The library's stream() runs
in this process between them (the server idle), from the call to its last piece, against one client's request sent
-> [DONE], and so does the server's Scheduler driven in this process with no HTTP (one job on a --slots loop), which
splits the gap into the engine's part and the HTTP path's. Then: a client that disconnects mid-stream, and how long until the server's slot is free (polling
/metrics, whose own round trip is in the figure), and the server's own count: cancellation to the row leaving the
batch, in seconds and in decode steps. Every request must end with 200 tokens and [DONE]: a dropped or truncated one fails the run.
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from flashlm_runtime import FlashLM
from flashlm_runtime.serve_cli import STREAM_INTERVAL_MS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

PROMPT = "Once upon a time"


def start_server(slots: int, stream_interval: float) -> tuple[subprocess.Popen, str, int]:
    cmd = [str(Path(sys.executable).parent / "flashlm-serve"), "--port", "0", "--slots", str(slots), "--threads", "1",
           "--max-queue", "1024", "--stream-interval", str(stream_interval)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = re.search(r"http://([\d.]+):(\d+)/v1", proc.stdout.readline())
    if not found:
        raise SystemExit(f"flashlm-serve did not start: {proc.stderr.read()}")
    return proc, found.group(1), int(found.group(2))


def stream_once(host: str, port: int, *, tokens: int, seed: int) -> dict:
    """One streamed completion; returns its send time, each token chunk's arrival time and the usage it reported."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "stream": True, "seed": seed,
                       "stream_options": {"include_usage": True}}).encode()
    head = b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    arrivals: list[float] = []
    data = b""
    with socket.create_connection((host, port), timeout=600) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = time.perf_counter()
        sock.sendall(head + body)
        while not data.endswith(b"data: [DONE]\n\n\r\n") and not data.endswith(b"0\r\n\r\n"):
            part = sock.recv(1 << 16)
            now = time.perf_counter()
            if not part:
                break
            arrivals.extend([now] * part.count(b'"finish_reason":null'))  # one per token chunk
            data += part
    done = time.perf_counter()
    usage = re.findall(rb'"completion_tokens":(\d+)', data)
    return {"sent": sent, "arrivals": arrivals, "done": done, "completion_tokens": int(usage[-1]) if usage else 0,
            "complete": b"data: [DONE]" in data}


def load(host: str, port: int, clients: int, tokens: int) -> dict:
    results: list[dict] = [{}] * clients

    def client(i: int) -> None:
        results[i] = stream_once(host, port, tokens=tokens, seed=i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [r for r in results if not r.get("complete") or r["completion_tokens"] != tokens]
    if bad:
        raise SystemExit(f"{len(bad)} of {clients} requests were dropped or truncated")
    start, end = min(r["sent"] for r in results), max(r["done"] for r in results)
    ttft = [r["arrivals"][0] - r["sent"] for r in results]
    itl = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    return {"tok_s": clients * tokens / (end - start), "ttft_ms": [1e3 * t for t in ttft], "itl_ms": [1e3 * t for t in itl],
            "request_tok_s": [tokens / (r["done"] - r["sent"]) for r in results]}


def library_tok_s(lm: FlashLM, tokens: int, seed: int, *, rows: int = 1) -> float:
    """The library's stream_batch of `rows` prompts, from the call to its last piece (stream() when rows is 1)."""
    t0 = time.perf_counter()
    n = sum(1 for _, p in lm.stream_batch([PROMPT] * rows, max_new_tokens=tokens, stop_at_eos=False, seed=seed) if p.token_id >= 0)
    return n / (time.perf_counter() - t0)


def scheduler_tok_s(lm: FlashLM, tokens: int, seed: int, *, slots: int) -> float:
    """One job on the server's Scheduler (its slot loop, its engine thread), no HTTP: from submit to its DoneEvent."""
    from flashlm_runtime.scheduler import DoneEvent, Job, Scheduler

    scheduler = Scheduler(lm, slots=slots, max_queue=1)
    done, count = threading.Event(), [0]

    def emit(event) -> None:
        if isinstance(event, DoneEvent):
            done.set()
        elif event.token_id >= 0:
            count[0] += 1

    job = Job(lm.encode(PROMPT), lm.sampling_params(seed=seed), tokens, emit=emit, stop_at_eos=False)
    t0 = time.perf_counter()
    scheduler.submit([job])
    done.wait()
    elapsed = time.perf_counter() - t0
    scheduler.drain(0)
    scheduler.join()
    return count[0] / elapsed


def metric(host: str, port: int, name: str) -> float:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while part := sock.recv(1 << 16):
            data += part
    return sum(float(line.split()[-1]) for line in data.decode().splitlines() if line.startswith(f"flashlm_{name}"))


def disconnect_to_free(host: str, port: int) -> float:
    """Seconds from closing a stream mid-way to the server's slots_busy reading 0."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}).encode()
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    seen = b""
    while seen.count(b"data: ") < 20:
        seen += sock.recv(1 << 16)
    sock.close()
    t0 = time.perf_counter()
    while metric(host, port, "slots_busy") != 0:
        pass
    return time.perf_counter() - t0


AGREEMENT_PROMPTS = ("Once upon a time", "A cat sat", "The little girl", "Tom and his dog", "One day, a bird", "The sun was hot",
                     "Lily wanted to", "There was a big tree")


def int8_agreement(host: str, port: int, lm: FlashLM, tokens: int) -> dict:
    """Greedy requests in flight together against each prompt alone in the library: int8 activations are quantized
    with one scale per batch, so a row's tokens may move with the other rows."""
    import http.client

    def greedy(prompt: str) -> list[str]:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0,
                                                            "ignore_eos": True, "logprobs": 0}), {"Content-Type": "application/json"})
        out = json.loads(conn.getresponse().read())["choices"][0]["logprobs"]["tokens"]
        conn.close()
        return out

    got: dict[str, list[str]] = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, greedy(p))) for p in AGREEMENT_PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    same, prefix = 0, []
    for p in AGREEMENT_PROMPTS:
        want = [lm.tokenizer.decode([i], skip_special_tokens=False)
                for i in lm.generate(p, temperature=0, max_new_tokens=tokens, stop_at_eos=False).token_ids]
        n = next((i for i, (a, b) in enumerate(zip(got[p], want)) if a != b), min(len(want), len(got[p])))
        same += got[p] == want
        prefix.append(n)
    return {"requests": len(AGREEMENT_PROMPTS), "tokens": tokens, "identical": same, "tokens_before_first_difference": prefix}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--disconnects", type=int, default=5)
    ap.add_argument("--stream-interval", type=float, default=STREAM_INTERVAL_MS, help="the server's --stream-interval, ms")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from flashlm_core.cpu import cpu_isa_flags, cpu_kind

    lm = FlashLM(int8=True, threads=1)
    proc, host, port = start_server(args.slots, args.stream_interval)
    try:
        load(host, port, 2, 20)  # warm-up: first-run allocations, bindings per batch size
        library_tok_s(lm, 20, 0)
        scheduler_tok_s(lm, 20, 0, slots=args.slots)
        runs = {n: [] for n in args.clients}
        library, engine, single, batch8 = [], [], [], []
        for rep in range(args.repeats):
            for n in args.clients:
                runs[n].append(load(host, port, n, args.tokens))
            library.append(library_tok_s(lm, args.tokens, rep))
            engine.append(scheduler_tok_s(lm, args.tokens, rep, slots=args.slots))
            single.append(load(host, port, 1, args.tokens)["request_tok_s"][0])
            batch8.append(library_tok_s(lm, args.tokens, rep, rows=args.slots))
        freed = [disconnect_to_free(host, port) for _ in range(args.disconnects)]
        cancel = {"count": metric(host, port, "cancel_seconds_count"), "seconds": metric(host, port, "cancel_seconds_sum"),
                  "steps_max": metric(host, port, "cancel_steps_max")}
        agreement = int8_agreement(host, port, lm, args.tokens)
        steps, step_s = metric(host, port, "step_seconds_count"), metric(host, port, "step_seconds_sum")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    table = {}
    for n, rs in runs.items():
        table[n] = {"tok_s": statistics.median(r["tok_s"] for r in rs),
                    "ttft_p50_ms": statistics.median(pct(r["ttft_ms"], 50) for r in rs),
                    "ttft_p99_ms": statistics.median(pct(r["ttft_ms"], 99) for r in rs),
                    "itl_p50_ms": statistics.median(pct(r["itl_ms"], 50) for r in rs),
                    "itl_p99_ms": statistics.median(pct(r["itl_ms"], 99) for r in rs)}
    one = table[min(table)]["tok_s"] if 1 in table else float("nan")
    print(f"{cpu_kind()} ({', '.join(cpu_isa_flags())}); flashlm-serve --slots {args.slots}, int8, 1 thread; "
          f"{args.tokens} tokens a request; medians of {args.repeats} interleaved repeats")
    print(f"{'clients':>7} {'tok/s':>7} {'x 1':>5} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}")
    for n, row in table.items():
        print(f"{n:>7} {row['tok_s']:>7,.0f} {row['tok_s'] / one:>5.2f} {row['ttft_p50_ms']:>7.1f}ms {row['ttft_p99_ms']:>7.1f}ms "
              f"{row['itl_p50_ms']:>6.2f}ms {row['itl_p99_ms']:>6.2f}ms")
    lib, srv = statistics.median(library), statistics.median(single)
    eng = statistics.median(engine)
    print(f"1 client over HTTP: {srv:,.0f} tok/s; library stream(): {lib:,.0f} tok/s; ratio {srv / lib:.3f}; "
          f"the Scheduler alone (no HTTP): {eng:,.0f} tok/s, {eng / lib:.3f} of the library")
    print(f"the library's batch of {args.slots} rows: {statistics.median(batch8):,.0f} tok/s, "
          f"{statistics.median(batch8) / lib:.2f}x its single stream")
    print(f"int8, {agreement['requests']} greedy requests in flight together: {agreement['identical']} equal to their prompt "
          f"alone; tokens before the first difference {agreement['tokens_before_first_difference']}")
    print(f"disconnect -> slot free: median {1e3 * statistics.median(freed):.1f} ms (mean decode step {1e3 * step_s / steps:.2f} ms); "
          f"inside the server, cancellation -> row out: mean {1e3 * cancel['seconds'] / cancel['count']:.2f} ms, "
          f"at most {cancel['steps_max']:.0f} step(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            **provenance(packages=("onnxruntime", "uvicorn", "starlette")), "slots": args.slots, "stream_interval_ms": args.stream_interval, "threads": 1, "int8": True,
            "tokens": args.tokens, "repeats": args.repeats, "table": table, "library_tok_s": library, "single_client_tok_s": single,
            "single_over_library": srv / lib, "scheduler_tok_s": engine, "library_batch_tok_s": batch8, "disconnect_to_free_s": freed, "cancel": cancel, "int8_agreement": agreement, "mean_step_s": step_s / steps,
            "raw": {n: [{"tok_s": r["tok_s"], "ttft_ms": r["ttft_ms"], "request_tok_s": r["request_tok_s"]} for r in rs]
                    for n, rs in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
