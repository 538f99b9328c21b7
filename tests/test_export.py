import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from flashlm_core import artifacts as A
from flashlm_core.errors import CheckpointError, ExportError
from flashlm_core.generation import client_rules, window_keep
from flashlm_export.exporter import export
from flashlm_export.validate import Gates
from flashlm_runtime.session import open_session, run_backbone


@pytest.fixture(scope="module")
def fp32(tiny_export):
    return open_session(str(tiny_export / A.GRAPH_FILES["model"]))


def test_io_contract(tiny_export, torch_model):
    cfg = torch_model.cfg
    model = onnx.load(str(tiny_export / A.GRAPH_FILES["model"]))
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    inputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input}
    outputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output}
    assert list(inputs) == A.backbone_inputs(cfg, A.PLAIN) and list(outputs) == A.backbone_outputs(cfg, A.PLAIN)
    i64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    assert inputs["input_ids"] == (i64, ["batch_size", "sequence_length"])
    assert inputs["attention_mask"] == (i64, ["batch_size", "total_sequence_length"])
    assert inputs["position_ids"] == (i64, ["batch_size", "sequence_length"])
    assert inputs["past_key_values.0.key"] == (f32, ["batch_size", cfg.n_heads, "past_sequence_length", cfg.head_dim])
    assert outputs["logits"] == (f32, ["batch_size", "sequence_length", cfg.vocab_size])
    assert outputs["present.1.value"] == (f32, ["batch_size", cfg.n_heads, "total_sequence_length", cfg.head_dim])
    assert outputs["last_hidden_state"] == (f32, ["batch_size", "sequence_length", cfg.dim])
    assert model.opset_import[0].version == 18
    # the embedding Gather stays fp32 in the int8 graph; the head MatMul is quantized
    q = onnx.load(str(tiny_export / A.GRAPH_FILES["model_quantized"]))
    ops = [n.op_type for n in q.graph.node]
    assert "Gather" in ops and "DequantizeLinear" not in ops and ops.count("MatMulInteger") >= 1 + 4 * cfg.n_layers


@torch.no_grad()
def test_zero_past_prefill_then_decode_equals_torch(fp32, torch_model):
    ids = np.array([[0, 5, 17, 250, 3, 99, 42]], np.int64)
    logits, past, hidden = run_backbone(fp32, torch_model.cfg, ids)  # past length 0
    t_logits, t_h, t_past = torch_model(torch.from_numpy(ids))
    assert np.abs(logits - t_logits.numpy()).max() <= 1e-4
    assert np.abs(hidden - t_h.numpy()).max() <= 1e-4
    for step in range(40):
        nxt = np.array([[int(t_logits[0, -1].argmax())]])
        logits, past, _ = run_backbone(fp32, torch_model.cfg, nxt, past=past)
        t_logits, _, t_past = torch_model(torch.from_numpy(nxt), past_kv=t_past)
        assert np.abs(logits - t_logits.numpy()).max() <= 1e-4, step
    assert past[0].shape == torch_model.cfg.kv_shape(1, 47)


def test_left_padded_batch_matches_rows_alone(fp32, torch_model):
    cfg = torch_model.cfg
    a = np.array([3, 9, 27, 81, 243, 200, 100, 50, 25], np.int64)
    b = np.array([7, 14, 28, 56], np.int64)
    pad = len(a) - len(b)
    ids = np.stack([a, np.concatenate([np.zeros(pad, np.int64), b])])
    mask = (np.arange(len(a))[None] >= np.array([[0], [pad]])).astype(np.int64)
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, past, _ = run_backbone(fp32, cfg, ids, attention_mask=mask, position_ids=pos)
    alone_b, past_b, _ = run_backbone(fp32, cfg, b[None])
    alone_a, _, _ = run_backbone(fp32, cfg, a[None])
    assert np.abs(logits[1, pad:] - alone_b[0]).max() <= 1e-4
    assert np.abs(logits[0] - alone_a[0]).max() <= 1e-4
    # one decode step on the padded batch
    nxt = np.array([[1], [2]], np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
    step, _, _ = run_backbone(fp32, cfg, nxt, past=past, attention_mask=mask2, position_ids=pos[:, -1:] + 1)
    step_b, _, _ = run_backbone(fp32, cfg, nxt[1:], past=past_b)
    assert np.abs(step[1] - step_b[0]).max() <= 1e-4


def test_a_graph_whose_io_leaves_the_contract_is_refused(tiny_export, torch_model, tmp_path):
    from flashlm_export.exporter import _contract_io

    model = onnx.load(str(tiny_export / A.GRAPH_FILES["model"]))
    assert _contract_io(tiny_export / A.GRAPH_FILES["model"], torch_model.cfg, A.PLAIN) == A.backbone_io(torch_model.cfg, A.PLAIN)
    model.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "mask_length"
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match="model.onnx: its IO .* is not the contract's"):
        _contract_io(tmp_path / "model.onnx", torch_model.cfg, A.PLAIN)


@torch.no_grad()
def test_fsp_head_parity(tiny_export, torch_model):
    sess = open_session(str(tiny_export / A.GRAPH_FILES["fsp_head"]))
    h = torch.randn(2, 5, torch_model.cfg.dim)
    got = sess.run(None, {"hidden_states": h.numpy()})[0]
    assert got.shape == (2, 5, torch_model.cfg.vocab_size)
    assert np.abs(got - torch_model.fsp_logits(h).numpy()).max() <= 1e-4


def test_manifest_hashes_validation_and_sidecars(tiny_export, torch_model):
    import hashlib

    m = json.loads((tiny_export / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["config"] == torch_model.cfg.to_dict()
    for rel, info in m["files"].items():
        data = (tiny_export / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"]
    assert set(m["graphs"]) == {"model", "model_quantized", "fsp_head", "fsp_head_quantized"}
    v = m["validation"]
    assert v["fp32_vs_torch"]["max_abs_decode"] <= 1e-4 and v["fsp_vs_torch"]["max_abs"] <= 1e-4
    assert v["int8_vs_fp32"]["top1_agreement"] >= 0.95 and v["int8_vs_fp32"]["ppl_rel_delta"] <= 0.01
    assert m["quantization"]["weight_type"] == "QInt8" and m["producer"]["onnxruntime"]
    cfg = json.loads((tiny_export / "config.json").read_text())
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == ("llama", 64, 2, 4)
    assert cfg["tie_word_embeddings"] is True and cfg["flashlm"]["rope_interleaved"] is True and cfg["eos_token_id"] == 0
    assert m["decoding"] == client_rules(torch_model.cfg)  # what clients that run the graphs themselves follow
    assert m["decoding"]["window_keep"] == window_keep(torch_model.cfg) and "the" in m["decoding"]["plan_skip_words"]
    gen = json.loads((tiny_export / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"]) == (0.8, 0.9)
    tc = json.loads((tiny_export / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_export_is_deterministic(tiny_run, small_data, tiny_export, tmp_path):
    export(tiny_run / "best", tmp_path / "again", int8=True, data_dir=str(small_data), log=lambda *_: None)
    for rel in A.GRAPH_FILES.values():
        assert (tmp_path / "again" / rel).read_bytes() == (tiny_export / rel).read_bytes(), rel


def test_int8_only_bundle_runs_like_the_full_export(tiny_run, small_data, tiny_export, tmp_path):
    from flashlm_runtime import FlashLM

    with pytest.raises(ExportError, match="--int8-only needs --int8"):
        export(tiny_run / "best", tmp_path / "x", int8_only=True, data_dir=str(small_data))
    out = tmp_path / "bundle"
    m = export(tiny_run / "best", out, int8=True, int8_only=True, data_dir=str(small_data), log=lambda *_: None)
    assert set(m["graphs"]) == {"model_quantized", "fsp_head_quantized"}
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["fsp_head_quantized.onnx", "model_quantized.onnx"]
    assert {k for k in m["files"] if k.endswith(".onnx")} == {"onnx/model_quantized.onnx", "onnx/fsp_head_quantized.onnx"}
    assert m["validation"]["fp32_vs_torch"]["max_abs_decode"] <= 1e-4  # fp32 was still checked before it was dropped
    assert json.loads((out / "config.json").read_text())["flashlm"]["fsp"]["files"] == ["onnx/fsp_head_quantized.onnx"]
    for name in ("model_quantized", "fsp_head_quantized"):
        assert (out / A.GRAPH_FILES[name]).read_bytes() == (tiny_export / A.GRAPH_FILES[name]).read_bytes()
    small, full = FlashLM(out, verify="all"), FlashLM(tiny_export)
    assert small.generate("Once upon a time", seed=3).text == full.generate("Once upon a time", seed=3).text
    assert small.plan("Once upon a time", k=5) == full.plan("Once upon a time", k=5)
    with pytest.raises(CheckpointError, match="exported with --int8-only"):
        FlashLM(out, int8=False)


def test_int8_gate_failure_writes_nothing(tiny_run, small_data, tmp_path):
    with pytest.raises(ExportError, match="int8 drifted from fp32.*top-1 agreement"):
        export(tiny_run / "best", tmp_path / "x", int8=True, data_dir=str(small_data), gates=Gates(min_int8_top1=1.01), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export(tmp_path / "missing", tmp_path / "o")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "best", broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        export(broken, tmp_path / "o")
    cfg = json.loads((tiny_run / "best" / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99 is newer"):
        export(broken, tmp_path / "o")
    (broken / "config.json").write_text(json.dumps(cfg))
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        export(broken, tmp_path / "o")
    with pytest.raises(ExportError, match="opset 12 is too old"):
        export(tiny_run / "best", tmp_path / "o", opset=12)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ExportError, match="--force"):
        export(tiny_run / "best", tmp_path / "exists")


def test_cli_errors_are_one_line(tmp_path):
    exe = str(Path(sys.executable).parent / "flashlm-export")
    r = subprocess.run([exe, str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such checkpoint folder" in r.stderr
