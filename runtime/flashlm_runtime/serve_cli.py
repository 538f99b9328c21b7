"""flashlm-serve: the OpenAI-compatible completions server (needs the 'serve' extra: uvicorn, starlette)."""
from __future__ import annotations

import os
import sys

import click

from flashlm_core import artifacts as A
from flashlm_core.clikit import guarded, require_extra
from flashlm_core.errors import ConfigError

# Milliseconds between hand-overs of streamed tokens from the engine thread to the event loop: each one costs the event
# loop a write per stream and holds the GIL the engine needs between graph runs, so fewer of them give more tokens/s,
# most with many streams (bench/serve_load.py --stream-interval compares); 10 ms is under one frame of a 60 Hz screen.
STREAM_INTERVAL_MS = 10.0
DEFAULT_SLOTS = 8  # rows of one decode batch: tokens/s still rises at 8 rows, 1 thread (bench/batch_scaling.py)


@click.command()
@click.option("--model", "model_dir", default=None, help="Export folder (default: the bundled model).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 listens on every interface.")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port; 0 picks a free one (printed at start).")
@click.option("--slots", type=int, default=DEFAULT_SLOTS, show_default=True, help="Requests generated at once (continuous batching); more wait in a queue.")
@click.option("--max-queue", type=int, default=256, show_default=True, help="Requests that may wait for a slot; past that, 429 with Retry-After.")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads for the decode batch.")
@click.option("--int8/--fp32", default=True, show_default=True, help="Which graph to serve.")
@click.option("--api-key", default=None, envvar="FLASHLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/ routes (or set FLASHLM_API_KEY).")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow browser pages from this origin (repeatable); no CORS by default.")
@click.option("--model-id", default=None, help=f"The model's name in the API (default: the export folder's name; {A.MODEL_NAME} for the bundled model).")
@click.option("--shutdown-grace", type=float, default=10.0, show_default=True, help="Seconds in-flight requests get to finish after SIGTERM.")
@click.option("--request-timeout", type=float, default=10.0, show_default=True, help="Seconds a client has to send a request's headers, and then its body.")
@click.option("--stream-interval", type=float, default=STREAM_INTERVAL_MS, show_default=True,
              help="Milliseconds between hand-overs of streamed tokens to the HTTP side; 0 sends every token at once (smoother, fewer tokens/s).")
@guarded
def serve_cmd(model_dir, host, port, slots, max_queue, threads, int8, api_key, cors_origins, model_id, shutdown_grace, request_timeout,
              stream_interval):
    """Serve an exported FlashLM over HTTP in the OpenAI completions API's shape (continuous batching)."""
    require_extra("serve")
    if not 1 <= slots <= 64:
        raise ConfigError(f"--slots must be from 1 to 64, got {slots}")
    if not 0 <= max_queue <= 100_000:
        raise ConfigError(f"--max-queue must be from 0 to 100000, got {max_queue}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {port}")
    if not (0 <= shutdown_grace <= 3600):
        raise ConfigError(f"--shutdown-grace must be from 0 to 3600 seconds, got {shutdown_grace}")
    if not (0.1 <= request_timeout <= 3600):
        raise ConfigError(f"--request-timeout must be from 0.1 to 3600 seconds, got {request_timeout}")
    if not (0 <= stream_interval <= 1000):
        raise ConfigError(f"--stream-interval must be from 0 to 1000 milliseconds, got {stream_interval}")
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key (or FLASHLM_API_KEY) is empty: give a key, or unset it to serve without one")
    from flashlm_runtime.lm import FlashLM
    from flashlm_runtime.server import serve

    lm = FlashLM(model_dir, int8=int8, threads=threads)
    name = model_id or (A.MODEL_NAME if model_dir is None else os.path.basename(str(lm.export.root).rstrip("/")))

    def listening(address) -> None:
        click.echo(f"flashlm-serve: {name} on http://{address[0]}:{address[1]}/v1 ({slots} slots, "
                   f"{'int8' if int8 else 'fp32'}, {lm.ops} ops, {lm.threads} thread{'s' if lm.threads > 1 else ''})"
                   f"{', API key required' if api_key else ''}", err=False)
        sys.stdout.flush()

    try:
        serve(lm, host=host, port=port, slots=slots, max_queue=max_queue, api_key=api_key, cors_origins=tuple(cors_origins),
              grace=shutdown_grace, model_id=name, on_listen=listening, request_timeout=request_timeout,
              stream_interval=stream_interval / 1e3)
    except OSError as exc:  # e.g. the port is taken
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port") from None
