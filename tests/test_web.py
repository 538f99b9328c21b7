"""examples/web in a real browser (headless Chromium driven by playwright-core): the shipped model runs in the page,
its greedy picks agree with the Python runtime's (tests/agreement.py: WASM and native int8 kernels round differently),
and a user's mistakes show as messages on the page."""
import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from agreement import assert_greedy_agrees
from flashlm_core.generation import SAMPLE_PROMPTS
from flashlm_runtime import FlashLM
from node_clients import PORTABLE_MODEL_DIR, run_node

ROOT = Path(__file__).resolve().parents[1]


def serve(model_dir=PORTABLE_MODEL_DIR):
    """Start examples/web/serve.py on a free port; returns (process, url)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "web" / "serve.py"), "--model", str(model_dir), "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"serve.py did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[3]


def drive(request: dict) -> dict:
    """clients/web/drive.mjs: playwright-core driving Debian's chromium (CHROMIUM overrides the path)."""
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        pytest.fail(f"no Chromium at {chromium}: run `make setup` (apt-get install chromium) or set CHROMIUM")
    return run_node("web/drive.mjs", request, package="playwright-core", env={**os.environ, "CHROMIUM": chromium})


@pytest.fixture(scope="module")
def page_url():
    proc, url = serve()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_the_page_generates_the_runtime_greedy_ids_and_a_plan(page_url, tmp_path):
    lm = FlashLM(PORTABLE_MODEL_DIR)  # the folder the page runs: the same graph, other int8 kernels
    runs = [{"query": f"prompt={quote(p)}&temperature=0&max=40"} for p in SAMPLE_PROMPTS]
    shot = tmp_path / "page.png"
    out = drive({"url": page_url, "runs": runs, "screenshot": {"query": "prompt=Once%20upon%20a%20time&max=60&seed=1", "path": str(shot)}})
    for prompt, r in zip(SAMPLE_PROMPTS, out["results"]):
        assert "error" not in r, (r, out["console"])
        assert r["prompt_ids"] == lm.encode(prompt)
        assert r["graph"] == "model_quantized" and r["tok_s"] > 0
    # the page stops before <|endoftext|>: fewer than 40 ids means it picked it next
    rows = out["results"][: len(SAMPLE_PROMPTS)]
    assert_greedy_agrees(lm, [r["prompt_ids"] for r in rows], [r["ids"] for r in rows], ended=[len(r["ids"]) < 40 for r in rows],
                         what="the page")
    # the plan's words by probability: each of the page's within 0.05 of the runtime's for that word (a swap of two
    # near-equal words, or of the 10th and 11th, is rounding, not disagreement)
    want = dict(lm.plan("Once upon a time", k=40))
    page_plan = out["results"][0]["plan"]
    assert len(page_plan) == 10 and all(w in want and abs(p - want[w]) <= 0.05 for w, p in page_plan), (page_plan, want)
    sampled = out["screenshot"]
    assert sampled["new_tokens"] > 0 and sampled["text"].strip()
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_the_page_follows_the_manifests_decoding_rules(tmp_path):
    """The page takes its decoding rules from the manifest (flashlm_core.generation.client_rules), not from a copy: a
    skip word added there leaves the plan, a greedy threshold above the temperature makes sampling greedy, and a
    manifest without the rules, or whose backbone takes other inputs than the page feeds, is refused on the page."""
    folder = tmp_path / "export"
    shutil.copytree(PORTABLE_MODEL_DIR, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    greedy, sampled = (f"prompt={quote(SAMPLE_PROMPTS[0])}&max=30&temperature={t}&seed=3" for t in (0, 0.8))
    proc, url = serve(folder)
    try:
        before_greedy, before_sampled = drive({"url": url, "runs": [{"query": greedy}, {"query": sampled}]})["results"]
        assert before_sampled["ids"] != before_greedy["ids"]  # at 0.8 this seed samples off the greedy path
        rules = manifest["decoding"]
        top = before_greedy["plan"][0][0]
        changed = {**rules, "plan_skip_words": [*rules["plan_skip_words"], top.lower()], "greedy_below": 5.0}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "decoding": changed}))
        after = drive({"url": url, "runs": [{"query": sampled}]})["results"][0]
        assert after["ids"] == before_greedy["ids"]
        assert [w for w, _ in after["plan"]][:9] == [w for w, _ in before_greedy["plan"]][1:]
        (folder / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "decoding"}))
        refused = drive({"url": url, "runs": [{"query": greedy}]})["results"][0]
        assert "no 'decoding' rules" in refused["shown"] and "export it again" in refused["shown"]
        graph = manifest["graphs"]["model_quantized"]
        renamed = {**graph, "inputs": [{**t, "name": "pos"} if t["name"] == "position_ids" else t for t in graph["inputs"]]}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "graphs": {**manifest["graphs"], "model_quantized": renamed}}))
        refused = drive({"url": url, "runs": [{"query": greedy}]})["results"][0]
        assert "takes input_ids, attention_mask, pos," in refused["shown"] and "export it again" in refused["shown"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_mistakes_show_a_message_on_the_page(page_url):
    long_prompt = quote("Once upon a time " * 150)
    out = drive({"url": page_url, "runs": [{"query": "model=/no-such-model/&prompt=x"},
                                           {"query": f"prompt={long_prompt}"},
                                           {"query": "prompt=x&temperature=5"}]})
    missing, too_long, bad_value = out["results"]
    assert "No model at /no-such-model/" in missing["shown"] and "serve.py --model" in missing["shown"]
    assert "this model reads at most 256" in too_long["shown"]
    assert "temperature must be a number" in bad_value["shown"]


def test_serve_answers_404_outside_its_folders(page_url):
    host, port = page_url.split("/")[2].split(":")
    for path in ("/model/../../../../etc/passwd", "/../Makefile", "/vendor/ort/../../package.json"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path)  # sent as written: http.client does not normalise ..
        assert conn.getresponse().status == 404, path
        conn.close()


def test_serve_refuses_a_folder_that_is_not_an_export(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "web" / "serve.py"), "--model", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not an export folder" in r.stderr


def test_serve_refuses_a_contrib_export_in_one_line():
    from flashlm_runtime.manifest import DEFAULT_MODEL_DIR  # the runtime's bundle: contrib ops

    r = subprocess.run([sys.executable, str(ROOT / "examples" / "web" / "serve.py"), "--model", str(DEFAULT_MODEL_DIR), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "contrib-ops export" in r.stderr
    assert "--ops plain" in r.stderr and "Traceback" not in r.stderr


def test_serve_serves_the_page_and_the_model_files_only(page_url):
    host, port = page_url.split("/")[2].split(":")

    def status(path):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path)
        code = conn.getresponse().status
        conn.close()
        return code

    assert status("/") == 200 and status("/app.mjs") == 200 and status("/model/manifest.json") == 200
    assert status("/model/onnx/model_quantized.onnx") == 200
    for path in ("/serve.py", "/model/", "/model/onnx/", "/vendor/ort/", "/model/.hidden", "/%00", "/model/%00x", "/index.html%00.py"):
        assert status(path) == 404, path


def test_serve_on_a_taken_port_is_one_line(page_url):
    port = page_url.split("/")[2].split(":")[1]
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "web" / "serve.py"), "--port", port], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.startswith("error: cannot listen") and "Traceback" not in r.stderr
