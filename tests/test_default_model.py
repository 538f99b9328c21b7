"""The model shipped inside the runtime package: torch-free loading, manifest hashes, card figures."""
import hashlib
import importlib.util
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from agreement import assert_greedy_agrees
from flashlm_core import artifacts as A
from flashlm_runtime import FlashLM
from flashlm_runtime.manifest import DEFAULT_MODEL_DIR, open_export
from node_clients import PORTABLE_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CARD = ROOT / "MODEL_CARD.md"


def _eval_export():
    spec = importlib.util.spec_from_file_location("eval_export", ROOT / "bench" / "eval_export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bundle_is_int8_only_under_8_mb_and_hashes_match():
    folder = open_export(DEFAULT_MODEL_DIR, verify="all")
    m = folder.manifest
    assert set(m["graphs"]) == {"model_quantized", "fsp_head_quantized"}
    assert m["ops"] == "contrib"  # the fused graph flashlm-run decodes fastest
    shipped = {p.relative_to(DEFAULT_MODEL_DIR).as_posix() for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()}
    assert shipped == set(m["files"]) | {"manifest.json"}
    for rel, info in m["files"].items():
        data = (DEFAULT_MODEL_DIR / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"], rel
    assert sum((DEFAULT_MODEL_DIR / rel).stat().st_size for rel in shipped) <= 8_000_000
    assert folder.config.n_params == 3_737_856  # the v10-fsp shape


def test_package_data_globs_cover_every_shipped_file():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for path in DEFAULT_MODEL_DIR.rglob("*"):
        if path.is_file():
            # each folder of data is a package of its own (so setuptools does not warn), e.g. flashlm_runtime.default_model.onnx
            package = ".".join(("flashlm_runtime", *path.parent.relative_to(DEFAULT_MODEL_DIR.parent).parts))
            assert package in setup["packages"], f"{package} is not listed in pyproject's packages"
            globs = setup["package-data"].get(package, [])
            assert any(fnmatch(path.name, g) for g in globs), f"{path} would be left out of the wheel"


TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any torch import now raises ImportError
from flashlm_runtime import FlashLM
lm = FlashLM()
g = lm.generate("Once upon a time", seed=0, max_new_tokens=30)
assert lm.plan("Once upon a time")
assert "torch" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
print("TORCH-FREE-OK", len(g.token_ids))
"""


def test_default_model_loads_and_generates_without_torch():
    r = subprocess.run([sys.executable, "-c", TORCH_FREE], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "TORCH-FREE-OK 30" in r.stdout


def test_flashlm_run_needs_no_model_argument():
    r = subprocess.run([str(BIN / "flashlm-run"), "--prompt", "Once upon a time", "--seed", "0", "--max-new-tokens", "40"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time") and len(r.stdout) > len("Once upon a time") + 40
    assert "new tokens" in r.stderr


def test_runtime_ppl_on_the_fixed_slice_matches_the_card(corpus_dir):
    card = CARD.read_text()
    found = re.search(r"^\|.*fixed slice.*\|\s*\*\*([0-9.]+)\*\*\s*\|\s*$", card, re.M)  # the table row's bold PPL
    assert found, "MODEL_CARD.md has no 'fixed slice' PPL row"
    score = FlashLM(threads=2).score(_eval_export().slice_text(corpus_dir))
    assert score.tokens > 10_000
    assert score.ppl == pytest.approx(float(found.group(1)), rel=0.01)


def test_portable_folder_is_the_same_model_in_plain_ops():
    """models/flashlm-v10-fsp-onnx: the bundle's weights for transformers.js, the browser, optimum and genai."""
    portable, bundle = open_export(PORTABLE_MODEL_DIR, verify="all"), open_export(DEFAULT_MODEL_DIR)
    assert portable.ops == "plain" and set(portable.manifest["graphs"]) == set(bundle.manifest["graphs"])
    assert portable.config == bundle.config
    assert portable.manifest["source"]["step"] == bundle.manifest["source"]["step"]
    assert (PORTABLE_MODEL_DIR / "tokenizer.json").read_bytes() == (DEFAULT_MODEL_DIR / "tokenizer.json").read_bytes()
    assert sum(p.stat().st_size for p in PORTABLE_MODEL_DIR.rglob("*") if p.is_file()) <= 8_000_000
    # the same int8 weights, byte for byte (the contrib graph drops only the plain graph's RoPE/mask constants and adds its rotary tables and top outputs' constants)
    import onnx
    from onnx import numpy_helper

    def weights(folder):
        model = onnx.load(str(folder / "onnx" / "model_quantized.onnx"))
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    plain, fused = weights(PORTABLE_MODEL_DIR), weights(DEFAULT_MODEL_DIR)
    assert {"blocks.3.w_down_T_quantized", "lm_head.weight_T_quantized", "embed.weight"} <= fused.keys() <= plain.keys() | {"cos_cache", "sin_cache", A.TEMPERATURE, "top_n", "minus_one_i"}
    assert all((fused[k] == plain[k]).all() for k in fused.keys() & plain.keys())
    # two graphs (attention by Concat + MatMul, or by GroupQueryAttention) quantize slightly different activations:
    # greedy picks are judged by the clear-margin rule of tests/agreement.py, not one for one
    a, b = FlashLM(PORTABLE_MODEL_DIR), FlashLM()
    runs = [a.generate(prompt, temperature=0, max_new_tokens=30) for prompt in ("Once upon a time", "The little dog")]
    assert_greedy_agrees(b, [g.prompt_ids for g in runs], [g.token_ids for g in runs], ended=[g.finish_reason == "eos" for g in runs],
                         what="the portable folder")
