"""GGUF export: the file's metadata and validation, and the real llama.cpp (node-llama-cpp) running it."""
import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from flashlm.checkpoint import load_checkpoint
from flashlm.generate import generate
from flashlm_core.config import ModelConfig
from flashlm_core.errors import ExportError
from flashlm_core.generation import SAMPLE_PROMPTS
from flashlm_export.gguf_export import export_gguf, numpy_forward, read_tensors
from flashlm_export.validate import Gates
from node_clients import need_module, run_node

gguf = need_module("gguf")


@pytest.fixture(scope="module")
def gguf_files(tiny_run, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    files = {t: out / f"tiny.{t}.gguf" for t in ("f32", "q8_0")}
    for t, path in files.items():
        export_gguf(tiny_run / "best", path, gguf_type=t, data_dir=str(small_data), log=lambda *_: None)
    return files


def _field(reader, key):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tobytes().decode()


def test_metadata_says_llama_gpt2_tokenizer_and_flashlm_provenance(gguf_files, tiny_run):
    model, ckpt = load_checkpoint(tiny_run / "best")
    cfg = model.cfg
    r = gguf.GGUFReader(str(gguf_files["q8_0"]))
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(r, "llama.block_count") == cfg.n_layers and _field(r, "llama.attention.head_count") == cfg.n_heads
    assert _field(r, "llama.rope.dimension_count") == cfg.head_dim and _field(r, "llama.context_length") == cfg.max_seq_len
    assert len(_field(r, "tokenizer.ggml.tokens")) == cfg.vocab_size
    assert _field(r, "tokenizer.ggml.add_bos_token") is False
    assert ModelConfig.from_dict(json.loads(_field(r, "flashlm.config"))) == cfg
    assert _field(r, "general.dataset.0.name") == "TinyStories" and _field(r, "general.quantized_by").startswith("flashlm-export")
    assert json.loads(_field(r, "flashlm.source"))["step"] == ckpt["step"]
    report = json.loads(_field(r, "flashlm.validation"))
    assert report["gguf_type"] == "q8_0" and report["gguf_vs_torch"]["ppl_rel_delta"] <= 0.01
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd


@torch.no_grad()
def test_numpy_forward_of_the_file_equals_torch(gguf_files, tiny_run):
    model, _ = load_checkpoint(tiny_run / "best")
    ids = np.array([0, 5, 17, 250, 3, 99, 42, 7, 7, 300])
    got = numpy_forward(model.cfg, read_tensors(gguf_files["f32"]), ids)
    want = model(torch.from_numpy(ids)[None])[0][0].numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_failed_gate_writes_nothing_and_bad_paths_are_named(tiny_run, small_data, tmp_path):
    out = tmp_path / "m.q8_0.gguf"
    with pytest.raises(ExportError, match="drifted from torch fp32"):
        export_gguf(tiny_run / "best", out, gguf_type="q8_0", data_dir=str(small_data), gates=Gates(max_int8_ppl_delta=-1.0), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="ending in .gguf"):
        export_gguf(tiny_run / "best", tmp_path / "folder", data_dir=str(small_data))
    out.write_bytes(b"keep")
    with pytest.raises(ExportError, match="--force"):
        export_gguf(tiny_run / "best", out, data_dir=str(small_data))
    assert out.read_bytes() == b"keep"


# ---- the real llama.cpp -------------------------------------------------------------------------------

def llama_cpp(request: dict) -> dict:
    """clients/llama_cpp/check.mjs: node-llama-cpp 3.21.1, prebuilt CPU llama.cpp."""
    return run_node("llama_cpp/check.mjs", request, package="node-llama-cpp", timeout=600)


def _stories(corpus_dir, n):
    text = (corpus_dir / "valid.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:n]


def test_llama_cpp_tokenizes_real_text_as_we_do(gguf_files, tiny_run, corpus_dir):
    tok = Tokenizer.from_file(str(tiny_run / "best" / "tokenizer.json"))
    texts = _stories(corpus_dir, 40) + ["It's Tom's dog. \"Yes!\" she said -- 3 cats, 12 dogs...", "  two  spaces\nnew line"]
    got = llama_cpp({"model": str(gguf_files["q8_0"]), "texts": texts})["tokens"]
    for text, ids in zip(texts, got):
        assert ids == tok.encode(text).ids, text[:60]


@torch.no_grad()
def test_llama_cpp_f32_greedy_equals_torch_and_q8_0_agrees_on_validation(gguf_files, tiny_run, small_data):
    model, _ = load_checkpoint(tiny_run / "best")
    tok = Tokenizer.from_file(str(tiny_run / "best" / "tokenizer.json"))
    prompts = [tok.encode(p).ids for p in SAMPLE_PROMPTS]
    want = [generate(model, ids, max_new_tokens=40, temperature=0) for ids in prompts]  # torch greedy with its KV cache
    got = llama_cpp({"model": str(gguf_files["f32"]), "greedy": {"prompts": prompts, "tokens": 40}})["greedy"]
    assert got == want

    T = model.cfg.max_seq_len
    val = np.fromfile(small_data / "val.bin", dtype=np.uint16).astype(np.int64)
    windows = [val[i * T : (i + 1) * T] for i in range(8)]
    top1 = llama_cpp({"model": str(gguf_files["q8_0"]), "top1": [w.tolist() for w in windows]})["top1"]
    ref = model(torch.from_numpy(np.stack(windows)))[0].argmax(-1).numpy()  # torch fp32, (8, T)
    assert (np.array(top1) == ref).mean() >= 0.95
