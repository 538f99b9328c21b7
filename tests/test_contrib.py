"""The contrib graph variant (--ops contrib) and its shared-KV decode loop: same tokens as the plain graph and torch."""
import json

import numpy as np
import onnx
import pytest

from flashlm.generate import generate as torch_generate
from flashlm_core import artifacts as A
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError
from flashlm_runtime import FlashLM
from flashlm_runtime.session import log_softmax, open_session
from flashlm_runtime.shared_kv import SharedKVEngine

PROMPTS = ["Once upon a time", "The little girl saw a big red ball in the park and she wanted to play with it", "", "Tom"]


@pytest.fixture(scope="module")
def contrib32(tiny_contrib_export):
    return FlashLM(tiny_contrib_export, int8=False)


def test_manifest_sidecars_and_io_name_the_variant(tiny_contrib_export):
    manifest = json.loads((tiny_contrib_export / A.MANIFEST).read_text())
    assert manifest["ops"] == "contrib"
    assert json.loads((tiny_contrib_export / "config.json").read_text())["flashlm"]["ops"] == "contrib"
    genai = json.loads((tiny_contrib_export / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is True and "position_ids" not in genai["model"]["decoder"]["inputs"]
    cfg = ModelConfig.from_dict(manifest["config"])
    for name in ("model", "model_quantized"):
        session = open_session(str(tiny_contrib_export / A.GRAPH_FILES[name]))
        assert [i.name for i in session.get_inputs()] == A.backbone_inputs(cfg, "contrib")
        assert [o.name for o in session.get_outputs()] == A.backbone_outputs(cfg, "contrib")
        assert manifest["graphs"][name]["inputs"] == A.backbone_io(cfg, "contrib")["inputs"]  # temperature included


def test_contrib_graph_has_a_third_of_the_nodes(tiny_export, tiny_contrib_export):
    def nodes(folder):  # the decoder's nodes (not the contrib graph's next-token top outputs, top/*)
        graph = onnx.load(str(folder / A.GRAPH_FILES["model"]), load_external_data=False).graph
        return sum(not n.name.startswith("top/") for n in graph.node)

    assert nodes(tiny_contrib_export) * 2.5 < nodes(tiny_export)
    ops = {n.op_type for n in onnx.load(str(tiny_contrib_export / A.GRAPH_FILES["model"])).graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops and "Concat" not in ops


def test_greedy_matches_torch_through_the_window_slide(contrib32, torch_model):
    prompt = contrib32.encode("Once upon a time, there was a little")
    got = contrib32.generate(prompt, max_new_tokens=200, temperature=0, stop_at_eos=False)
    assert contrib32.config.max_seq_len < len(prompt) + 200
    assert got.token_ids == torch_generate(torch_model, prompt, max_new_tokens=200, temperature=0)


def test_batches_equal_the_plain_graph_and_each_prompt_alone(lm32, contrib32):
    # ragged rows slide at different steps (the context is 128): the shared buffer refills one row while the others step
    for kwargs in ({"temperature": 0}, {"seed": 5, "temperature": 0.9, "top_p": 0.95}):
        want = lm32.generate_batch(PROMPTS, max_new_tokens=150, stop_at_eos=False, **kwargs)
        got = contrib32.generate_batch(PROMPTS, max_new_tokens=150, stop_at_eos=False, **kwargs)
        assert [g.token_ids for g in got] == [w.token_ids for w in want]
        for p, row in zip(PROMPTS, got):
            assert contrib32.generate(p, max_new_tokens=150, stop_at_eos=False, **kwargs).token_ids == row.token_ids


def test_scores_plan_and_int8_agree_with_the_plain_graph(lm32, lm8, contrib32, tiny_contrib_export, corpus_dir):
    text = (corpus_dir / "valid.txt").read_text()[:2000]
    a, b = lm32.score(text), contrib32.score(text)
    assert a.tokens == b.tokens and np.abs(np.array(a.token_logprobs) - np.array(b.token_logprobs)).max() <= 1e-4
    assert [w for w, _ in lm32.plan("Once upon a time")] == [w for w, _ in contrib32.plan("Once upon a time")]
    # int8: the same quantized weights, attention by another kernel: PPL within 0.5 %, greedy text alike
    p8, c8 = lm8, FlashLM(tiny_contrib_export)
    assert abs(c8.score(text).ppl / p8.score(text).ppl - 1) < 0.005
    assert c8.ops == "contrib" and p8.ops == "plain"


def test_the_engine_appends_in_place(contrib32):
    engine = SharedKVEngine(contrib32.session, contrib32.config, pad_id=contrib32.eot_id)
    engine.prefill([[5, 6, 7], [8]])
    buffers = [k.ctypes.data for k in engine.kv]
    engine.step([9, 10])
    engine.step([11, 12])
    assert [k.ctypes.data for k in engine.kv] == buffers  # no new cache arrays
    assert list(engine.lengths) == [5, 3] and engine._mask.sum(1).tolist() == [5, 3]
    assert np.abs(engine.kv[0][1, :, 3:]).max() == 0  # row 1 wrote nothing past its 3 tokens


def test_a_steps_top_outputs_are_its_softmax_at_the_engines_temperature(contrib32, tiny_contrib_export):
    report = json.loads((tiny_contrib_export / A.MANIFEST).read_text())["validation"]["top_vs_torch"]
    assert report["max_abs"] <= 1e-4  # the export's own gate, against torch
    engine = SharedKVEngine(contrib32.session, contrib32.config, pad_id=contrib32.eot_id)
    engine.prefill([[5, 6, 7], [8]])
    assert engine.top is None  # a prefill's last column is not every row's last token
    for temperature in (0.7, 1.3):
        engine.temperature = temperature
        logits = engine.step([9, 10]).astype(np.float64)
        probs, ids = engine.top
        softmax = np.exp(log_softmax(logits / temperature))
        assert probs.shape == ids.shape == (2, A.TOP_N)
        assert np.abs(probs - np.take_along_axis(softmax, ids, -1)).max() < 1e-5
        assert (np.diff(probs, axis=-1) <= 0).all()
        assert np.allclose(probs.sum(-1), -np.sort(-softmax, -1)[:, : A.TOP_N].sum(-1), atol=1e-5)  # the likeliest TOP_N


def test_unknown_graph_variant_is_refused(tiny_contrib_export, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_contrib_export, bad)
    manifest = json.loads((bad / A.MANIFEST).read_text())
    manifest["ops"] = "tensorrt"
    (bad / A.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="ops 'tensorrt'.*re-export with --ops plain"):
        FlashLM(bad)
