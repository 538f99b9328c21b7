"""Run the Node clients of clients/ (llama.cpp, transformers.js, the browser driver) on one JSON request each."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
# The shipped model as a plain-ops int8 export for other clients (the runtime's bundle is the contrib variant,
# which transformers.js' left-padded batches and onnxruntime-web do not run): make default-model writes both.
PORTABLE_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "flashlm-v10-fsp-onnx"


def missing(what: str) -> None:
    """A client this test needs is not installed: skip on a developer's machine, fail under CI=true (CI installs
    every client with `make setup`, so a skip there would hide a broken set-up behind a green run)."""
    message = f"{what} is not installed: run `make setup`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing client fails)")
    pytest.skip(message, allow_module_level=True)


def need_module(name: str):
    """import name, or `missing` (a Python client such as gguf or onnxruntime_genai)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package {name}")


def run_node(script: str, request: dict, *, package: str, env: dict | None = None, timeout: int = 900) -> dict:
    """node clients/SCRIPT < request; returns the JSON of its last stdout line. Without Node: `missing`; fails, naming
    `make setup`, when the client's npm package is not installed."""
    node = shutil.which("node")
    if node is None:
        missing("Node.js")
    folder = CLIENTS / Path(script).parent
    if not (folder / "node_modules" / package).is_dir():
        pytest.fail(f"{package} is not installed: run `make setup` (npm ci in {folder.relative_to(CLIENTS.parent)})")
    r = subprocess.run([node, str(CLIENTS / script)], input=json.dumps(request), capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
